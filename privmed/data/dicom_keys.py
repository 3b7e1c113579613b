"""Keyed pseudonyms for DICOM de-identification, and the encrypted re-identification table.

Everything derives from one site-held key file (random bytes; make one with
``privmed budget --new-key PATH``): HMAC-SHA256 with a domain label per use,
so a UID, a Patient ID and a date shift computed from the same input are
unrelated, and nobody without the key can recompute or invert them. The same
key gives the same pseudonyms in every file and every run; another key gives
others. The re-identification table (pseudonym -> original) is AES-256-GCM
encrypted with a key derived from the key file by HKDF-SHA256 (the
``cryptography`` package), and written only when asked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privmed.errors import PrivmedError

MAX_SHIFT_DAYS = 3650
_MAGIC = b"PMREID1"


def _mac(key: bytes, domain: str, value: str) -> bytes:
    return hmac.new(key, f"privmed-dicom-deid/{domain}\0{str(value).strip()}".encode(), hashlib.sha256).digest()


def pseudo_uid(key: bytes, uid: str) -> str:
    """A keyed UID under the 2.25 root: a 128-bit integer, as for UUID-derived UIDs (at most 44 characters)."""
    return f"2.25.{int.from_bytes(_mac(key, 'uid', uid)[:16], 'big')}"


def pseudo_patient(key: bytes, patient_id: str) -> str:
    """A keyed Patient ID (32 hex characters)."""
    return _mac(key, "patient", patient_id).hex()[:32]


def day_shift(key: bytes, patient_id: str) -> int:
    """Days (1 to MAX_SHIFT_DAYS back, as a negative number) by which all of one patient's dates move."""
    return -(1 + int.from_bytes(_mac(key, "dates", patient_id)[:4], "big") % MAX_SHIFT_DAYS)


def _table_key(key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"privmed dicom re-identification table").derive(
        key
    )


def read_reid_table(path: str | Path, *, key: bytes) -> dict[str, dict[str, str]]:
    """Decrypt a table written by :func:`write_reid_table`: ``{"patients": {...}, "uids": {...}}``."""
    p = Path(path)
    blob = p.read_bytes()
    if not blob.startswith(_MAGIC):
        raise PrivmedError(f"{p} is not a privmed re-identification table")
    nonce, body = blob[len(_MAGIC) : len(_MAGIC) + 12], blob[len(_MAGIC) + 12 :]
    try:
        return json.loads(AESGCM(_table_key(key)).decrypt(nonce, body, _MAGIC))
    except InvalidTag:
        raise PrivmedError(f"{p} does not open with this key file (another key, or the file was altered)") from None


def write_reid_table(path: str | Path, table: dict[str, dict[str, str]], *, key: bytes) -> Path:
    """Encrypt ``table`` to ``path``, merged with the table already there (same key), owner-only permissions."""
    p = Path(path)
    merged: dict[str, dict[str, str]] = {"patients": {}, "uids": {}}
    if p.exists():
        for part, entries in read_reid_table(p, key=key).items():
            merged.setdefault(part, {}).update(entries)
    for part, entries in table.items():
        merged.setdefault(part, {}).update(entries)
    nonce = os.urandom(12)
    blob = _MAGIC + nonce + AESGCM(_table_key(key)).encrypt(nonce, json.dumps(merged, sort_keys=True).encode(), _MAGIC)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
    os.replace(tmp, p)
    return p
