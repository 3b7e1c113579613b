"""Keyed patient pseudonyms: HMAC-SHA256 with a key the hospitals share.

Each hospital maps its own patient ids to ``HMAC(key, id)`` before anything
reaches the budget ledger, so the ledger never holds a raw id, and the same
patient scanned at two hospitals (same id) maps to one ledger entry. Without
the key the pseudonyms cannot be recomputed from guessed ids. The key is a
file of random bytes made once (``privmed budget --new-key PATH``) and
distributed to the hospitals out of band.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from privmed.errors import PrivmedError
from privmed.files import private_dir, read_private

KEY_BYTES = 32


def new_key(path: str | Path) -> Path:
    """Write a fresh random key (owner-only permissions); refuse to overwrite one."""
    p = Path(path)
    if p.exists():
        raise PrivmedError(f"key file {p} already exists; keep it (the hospitals share it) or remove it first")
    private_dir(p.parent)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEY_BYTES))
    return p


def load_key(path: str | Path | None) -> bytes:
    if path is None:
        raise PrivmedError(
            "the budget ledger needs the hospitals' shared pseudonym key: give ledger_key=<path> "
            "(create one with `privmed budget --new-key <path>`)"
        )
    p = Path(path)
    make = f"create it with `privmed budget --new-key {p}` and share it with the hospitals"
    key = read_private(p, what="pseudonym key file", max_bytes=4096, make=make)
    if len(key) < 16:
        raise PrivmedError(f"pseudonym key file {p} holds {len(key)} bytes; a key needs at least 16 (make a new one)")
    return key


def pseudonym(key: bytes, patient_id: str) -> str:
    return hmac.new(key, str(patient_id).encode(), hashlib.sha256).hexdigest()


def pseudonyms(key: bytes, patient_ids: Iterable[str]) -> dict[str, str]:
    """raw id -> pseudonym, for the distinct ids given."""
    return {pid: pseudonym(key, pid) for pid in dict.fromkeys(str(p) for p in patient_ids)}
