"""Symmetric and pairwise keys for encrypted weight transmission (Phuong 2019).

All cryptography is the ``cryptography`` package: AES-256-GCM for sealing,
X25519 + HKDF-SHA256 for the pairwise keys of the peer-to-peer variant. What
is written here: the key-file format (64 hex characters, owner-only
permissions) and the blob format ``len(sender) | sender | nonce | ciphertext``
where the sender's name is authenticated as associated data, so a blob that
was tampered with, or sealed under another key, fails with an error naming
both the receiving and the sending site.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privmed.errors import PrivmedError

NONCE_BYTES = 12


def load_key(path: str | Path) -> bytes:
    """A 256-bit key from a file of 64 hex characters that only its owner can read."""
    p = Path(path)
    if not p.is_file():
        raise PrivmedError(f"key file {p} does not exist; create one with privmed.privacy.aes_keys.write_key")
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise PrivmedError(f"key file {p} is readable by group or others (mode {mode:o}); run: chmod 600 {p}")
    text = p.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise PrivmedError(f"key file {p} must hold 64 hex characters (a 256-bit AES key), found {len(text)} characters")
    return key


def write_key(path: str | Path) -> Path:
    """Write a fresh random key file with mode 600 (created owner-only, never world-readable)."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(AESGCM.generate_key(bit_length=256).hex() + "\n")
    return p


def seal(plaintext: bytes, *, key: bytes, sender: str) -> bytes:
    name = sender.encode()
    nonce = os.urandom(NONCE_BYTES)
    return len(name).to_bytes(2, "big") + name + nonce + AESGCM(key).encrypt(nonce, plaintext, name)


def blob_sender(blob: bytes) -> str:
    n = int.from_bytes(blob[:2], "big")
    return blob[2:2 + n].decode(errors="replace")


def open_sealed(blob: bytes, *, key: bytes, receiver: str) -> bytes:
    """Decrypt and authenticate; a tampered or foreign blob raises PrivmedError naming both sites."""
    n = int.from_bytes(blob[:2], "big")
    name, nonce, body = blob[2:2 + n], blob[2 + n:2 + n + NONCE_BYTES], blob[2 + n + NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, body, name)
    except (InvalidTag, ValueError):
        raise PrivmedError(f"{receiver}: weights from {blob_sender(blob)!r} failed authentication "
                           "(tampered in transit or sealed under another key)") from None


class PairwiseKeys:
    """Each site's X25519 key pair; a pair of sites derives its AES key by Diffie-Hellman + HKDF."""

    def __init__(self, names: list[str]) -> None:
        self._private = {n: X25519PrivateKey.generate() for n in names}
        self.public = {n: k.public_key() for n, k in self._private.items()}  # what sites publish to each other

    def key(self, own: str, peer: str) -> bytes:
        shared = self._private[own].exchange(self.public[peer])
        info = ("privmed-fnt|" + "|".join(sorted((own, peer)))).encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
