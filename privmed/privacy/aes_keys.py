"""Symmetric and pairwise keys for encrypted weight transmission (Phuong 2019).

Paper: Phuong & Phong 2019, "Privacy-preserving deep learning via weight
transmission" (IEEE TIFS). All cryptography is the ``cryptography`` package:
AES-256-GCM for sealing, X25519 + HKDF-SHA256 for the pairwise keys of the
peer-to-peer variant. What is written here: the key-file format (64 hex
digits in a regular file owned by the user, mode 600 or stricter) and the
blob format ``len(header) | header | nonce | ciphertext`` where the header —
run id, round, sender, recipient — is authenticated as associated data: a
blob that was tampered with, or sealed under another key, fails with an
error naming both the receiving and the sending site, and a receiving site
refuses a blob of another run, of an older round than it already accepted
(a replay or reordering by an active relay), or addressed to another site
(:func:`check_header`). Faithful: weights are encrypted under a symmetric key
that the server does not hold (SNT: one key for all sites; FNT: one key per
pair of sites). Differs: the concrete primitives are this project's choice,
not the paper's: authenticated encryption (AES-GCM, so tampering is detected
rather than decrypted into garbage), and pairwise keys agreed by
Diffie-Hellman (X25519) in-process rather than distributed beforehand.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privmed.errors import PrivmedError
from privmed.files import read_private

NONCE_BYTES = 12
KEY_FILE_MAX_BYTES = 4096  # a key file is 65 bytes; more is not a key file


def load_key(path: str | Path) -> bytes:
    """A 256-bit key from a file of 64 hex digits, owned by this user and accessible by no one else.

    The file checks (one open, no symbolic link, a regular file of this user's,
    mode 600 or stricter) are :func:`privmed.files.read_private`'s.
    """
    make = "create one with privmed.privacy.aes_keys.write_key"
    raw = read_private(path, what="key file", max_bytes=KEY_FILE_MAX_BYTES, make=make)
    text = raw.decode("utf-8", errors="replace").strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise PrivmedError(
            f"key file {path} must hold one 256-bit AES key as 64 hex digits; found {len(text)} characters, "
            "not 64 hex digits"
        )
    return bytes.fromhex(text)


def write_key(path: str | Path) -> Path:
    """Write a fresh random key file with mode 600 (created owner-only, never world-readable)."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(AESGCM.generate_key(bit_length=256).hex() + "\n")
    return p


ANY_SITE = "*"  # SNT: sealed under the key every site shares, for whichever site the schedule sends it to


@dataclass(frozen=True)
class Header:
    """What a blob is bound to, authenticated as AES-GCM associated data (sent in the clear)."""

    run: str  # the run's id, drawn by the sites: a blob of another run (or of the run before a resume) is refused
    round: int  # the round it was sealed in: an older round's blob is a replay or a reordering
    sender: str
    recipient: str  # a site's name, or ANY_SITE

    def to_bytes(self) -> bytes:
        return json.dumps([self.run, self.round, self.sender, self.recipient]).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Header:
        run, rnd, sender, recipient = json.loads(raw)
        return Header(str(run), int(rnd), str(sender), str(recipient))


def seal(plaintext: bytes, *, key: bytes, header: Header) -> bytes:
    """``len(header) | header | nonce | AES-GCM(plaintext, associated data = header)``."""
    head = header.to_bytes()
    nonce = os.urandom(NONCE_BYTES)
    return len(head).to_bytes(2, "big") + head + nonce + AESGCM(key).encrypt(nonce, plaintext, head)


def open_sealed(blob: bytes, *, key: bytes, receiver: str) -> tuple[bytes, Header]:
    """Decrypt and authenticate; a tampered or foreign blob raises PrivmedError naming both sites.

    Returns the plaintext and its (authenticated) header, which the receiver
    checks with :func:`check_header` (the harness, which holds the key, does not).
    """
    n = int.from_bytes(blob[:2], "big")
    head, nonce, body = blob[2 : 2 + n], blob[2 + n : 2 + n + NONCE_BYTES], blob[2 + n + NONCE_BYTES :]
    try:
        plaintext = AESGCM(key).decrypt(nonce, body, head)
        return plaintext, Header.from_bytes(head)
    except (InvalidTag, ValueError, TypeError):
        sender = "?"
        with contextlib.suppress(ValueError, TypeError):
            sender = Header.from_bytes(head).sender
        raise PrivmedError(
            f"{receiver}: weights from {sender!r} failed authentication (tampered in transit or sealed under another "
            "key)"
        ) from None


def check_header(header: Header, *, receiver: str, run: str, round: int, last_round: int) -> None:
    """A receiving site's checks: this run, this round or later than the last it accepted, addressed to it."""
    if header.run != run:
        raise PrivmedError(
            f"{receiver}: weights from {header.sender!r} belong to another run ({header.run}); replayed blob refused"
        )
    if header.round < last_round or header.round > round:
        raise PrivmedError(
            f"{receiver}: weights from {header.sender!r} were sealed in round {header.round}, but this is round "
            f"{round} "
            f"and {receiver} already accepted round {last_round}: replayed or reordered blob refused"
        )
    if header.recipient not in (receiver, ANY_SITE):
        raise PrivmedError(
            f"{receiver}: weights from {header.sender!r} were sealed for {header.recipient!r}: re-addressed blob "
            "refused"
        )


class PairwiseKeys:
    """Each site's X25519 key pair; a pair of sites derives its AES key by Diffie-Hellman + HKDF."""

    def __init__(self, names: list[str]) -> None:
        self._private = {n: X25519PrivateKey.generate() for n in names}
        self.public = {n: k.public_key() for n, k in self._private.items()}  # what sites publish to each other

    def key(self, own: str, peer: str) -> bytes:
        shared = self._private[own].exchange(self.public[peer])
        info = ("privmed-fnt|" + "|".join(sorted((own, peer)))).encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
