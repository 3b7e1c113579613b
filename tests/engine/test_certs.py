"""privmed certs: a CA, the SuperLink's certificate for its hosts, per-site OpenSSH keys; private keys 0600."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from privmed.engine import launch
from privmed.engine.certs import check_private, make_certs
from privmed.errors import PrivmedError


def test_private_keys_are_0600_and_the_server_certificate_names_its_hosts(tmp_path):
    files = make_certs(tmp_path / "c", sites=["site-a", "site-b"], hosts=("10.0.0.5", "link.example.org"))
    for key in (files.ca_key, files.server_key, files.site_key("site-a"), files.site_key("site-b")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert check_private(key) == key
    assert stat.S_IMODE(files.root.stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert names.get_values_for_type(x509.DNSName) == ["link.example.org"]
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # signed by our CA
    # the site keys are the OpenSSH ECDSA pairs Flower's SuperNode authentication reads
    private = load_ssh_private_key(files.site_key("site-a").read_bytes(), None)
    public = load_ssh_public_key(files.site_public("site-a").read_bytes())
    assert private.public_key().public_numbers() == public.public_numbers()


def test_a_key_readable_by_others_is_refused(tmp_path):
    files = make_certs(tmp_path / "c", sites=["site-a"])
    files.site_key("site-a").chmod(0o640)
    with pytest.raises(PrivmedError, match="readable by others.*chmod 600"):
        check_private(files.site_key("site-a"))
    with pytest.raises(PrivmedError, match="readable by others"):
        launch.supernode_argv("127.0.0.1:9092", site="site-a", key=files.site_key("site-a"), ca_cert=files.ca_cert)
    files.server_key.chmod(0o644)
    with pytest.raises(PrivmedError, match="readable by others"):
        launch.superlink_argv(files)


def test_adding_sites_later_keeps_the_ca(tmp_path):
    first = make_certs(tmp_path / "c", sites=["site-a"])
    ca = first.ca_cert.read_bytes()
    make_certs(tmp_path / "c", sites=["site-b"])
    assert first.ca_cert.read_bytes() == ca and first.site_key("site-b").exists()


@pytest.mark.parametrize("name", ["", "../x", "a b", ".hidden"])
def test_site_names_are_checked(tmp_path, name):
    with pytest.raises(PrivmedError, match="site name"):
        make_certs(tmp_path / "c", sites=[name])


def test_commands_carry_tls_auth_and_a_port_each(tmp_path):
    files = make_certs(tmp_path / "c", sites=["site-a"])
    link = launch.superlink_argv(files, port=9092, database=tmp_path / "s.db")
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth", "--database"):
        assert flag in link
    assert "--insecure" not in link
    a = launch.supernode_argv("h:1", site="site-a", key=files.site_key("site-a"), ca_cert=files.ca_cert, partition=0)
    b = launch.supernode_argv("h:1", site="site-a", key=files.site_key("site-a"), ca_cert=files.ca_cert, partition=1)
    assert a[a.index("--port") + 1] != b[b.index("--port") + 1]  # the crash: every site told one port
    assert a[-1] == 'site-name="site-a" partition-id=0' and "--root-certificates" in a
