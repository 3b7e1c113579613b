"""The deployment's key material: a CA, the SuperLink's TLS certificate, and each site's SuperNode key pair.

``privmed certs DIR --site NAME ...`` writes, with the ``cryptography`` library
(no openssl or ssh-keygen on the path needed):

- ``ca.crt`` / ``ca.key``: a self-signed certificate authority. Every site gets
  ``ca.crt`` (to check it talks to the real SuperLink); ``ca.key`` stays with
  whoever signs certificates.
- ``superlink.crt`` / ``superlink.key``: the SuperLink's TLS certificate, signed
  by the CA, valid for the host names and IP addresses it is reached at
  (``--host``; 127.0.0.1 and localhost by default).
- ``sites/NAME`` / ``sites/NAME.pub``: each site's SuperNode authentication key
  pair, ECDSA P-384 in OpenSSH format as Flower's SuperNode authentication
  expects (``flower-supernode --auth-supernode-private-key``; the public key is
  registered with ``flwr supernode register NAME.pub --name NAME``). Each
  hospital keeps its own private key; only the ``.pub`` travels.

Private keys are written 0600 in a 0700 folder, and :func:`check_private`
refuses a private key that its group or others can read (as ssh does).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from privmed.errors import PrivmedError

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class CertFiles:
    """Where :func:`make_certs` wrote what."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink.key"

    def site_key(self, site: str) -> Path:
        return self.root / "sites" / site

    def site_public(self, site: str) -> Path:
        return self.root / "sites" / f"{site}.pub"


def check_site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise PrivmedError(f"site name {name!r}: use letters, digits, '.', '_' or '-' (at most 63, no leading dot)")
    return name


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never readable by others, not even briefly)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def check_private(path: str | Path) -> Path:
    """``path``, if it is a private key only its owner can read; else a PrivmedError naming the fix."""
    p = Path(path)
    if not p.is_file():
        raise PrivmedError(f"key file {p} does not exist (make keys with `privmed certs`)")
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise PrivmedError(f"key file {p} is readable by others (mode {mode:o}); run: chmod 600 {p}")
    return p


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _name(common: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "privmed"), x509.NameAttribute(NameOID.COMMON_NAME, common)]
    )


def _alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def make_certs(
    root: str | Path, *, sites: list[str], hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 365
) -> CertFiles:
    """Write the CA, the SuperLink's certificate for ``hosts`` and a key pair per site into ``root``."""
    files = CertFiles(Path(root))
    for site in sites:
        check_site_name(site)
    if len(set(sites)) != len(sites):
        raise PrivmedError(f"site names must be distinct, got {sites}")
    (files.root / "sites").mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o700)
    os.chmod(files.root / "sites", 0o700)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    if files.ca_key.exists():  # more sites later: keep the CA and the SuperLink's certificate
        ca_key = serialization.load_pem_private_key(check_private(files.ca_key).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("privmed CA"))
            .issuer_name(_name("privmed CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(ca_key, hashes.SHA384())
        )
        _write_private(files.ca_key, _pem_key(ca_key))
        files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        server_key = ec.generate_private_key(ec.SECP384R1())
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(ca_cert.subject)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(_alt_names(list(hosts))), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384())
        )
        _write_private(files.server_key, _pem_key(server_key))
        files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))

    for site in sites:
        key = ec.generate_private_key(ec.SECP384R1())
        _write_private(
            files.site_key(site),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        files.site_public(site).write_bytes(public + f" {site}\n".encode())
    return files
