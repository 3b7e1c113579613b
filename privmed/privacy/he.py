"""Additively homomorphic aggregation (Aono et al. 2017): the common interface.

Paper: Aono, Hayashi, Wang, Moriai 2017, "Privacy-preserving deep learning via
additively homomorphic encryption" (IEEE TIFS). Mechanism: the participants
share one secret key; each encrypts its update, the server only adds
ciphertexts and returns the encrypted sum, which the participants decrypt.
The server never holds the secret key nor any plaintext update.

Two schemes sit behind one pair of classes, split by who holds what:
- :class:`Keyring` (site side): ``public()`` -> the bytes a coordinator needs,
  ``encrypt(vector) -> bytes``, ``decrypt(bytes, n_values, count) -> vector``;
- :class:`Aggregator` (coordinator side, built from ``public()`` bytes only):
  ``check(bytes)`` refuses truncated or malformed ciphertexts (a foreign
  key is caught by the reply's key id, see :func:`key_id`), ``add([...])``.
Paillier (``he_paillier.py``) packs many quantised values into one plaintext,
as BatchCrypt does (Zhang et al. 2020, USENIX ATC), with the pure helpers
below; CKKS (``he_ckks.py``) encrypts floats directly with TenSEAL; the
stream scheme (``he_stream.py``, Castelluccia et al.'s CMT) adds quantised
values to a ChaCha20 keystream mod 2**32: ~1x the bytes, ~1x the time.
Every keyring states ``security_bits``, the security level its parameters
give (Paillier by NIST SP 800-57's modulus sizes, CKKS by the HE standard's
bound for its degree and modulus, stream by its ChaCha20 key).
Differs from the paper: Aono used LWE-based or Paillier encryption of
gradients for asynchronous SGD; here whole weighted model updates are
encrypted once per FedAvg round.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from privmed.errors import PrivmedError


def key_id(public: bytes) -> str:
    """A short fingerprint of the public material; replies carry it so a foreign key is named."""
    return hashlib.sha256(public).hexdigest()[:16]


def slot_bits(*, bits: int, max_summands: int) -> int:
    """Bits per packed slot so that the sum of ``max_summands`` values never overflows into the next slot."""
    return bits + math.ceil(math.log2(max(max_summands, 2)))


def quantise(values: np.ndarray, *, clip: float, bits: int) -> np.ndarray:
    """Clip to [-clip, clip] and map to unsigned integers in [0, 2**bits - 1] (offset binary)."""
    scale = (2**bits - 1) / (2 * clip)
    v = np.clip(np.asarray(values, dtype=np.float64), -clip, clip)
    return np.rint((v + clip) * scale).astype(np.uint64)


def dequantise(sums: np.ndarray, *, clip: float, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`quantise` for the sum of ``count`` quantised vectors."""
    scale = (2 * clip) / (2**bits - 1)
    return np.asarray(sums, dtype=np.float64) * scale - count * clip


def pack(ints: np.ndarray, *, width: int, per_plaintext: int) -> list[int]:
    """Concatenate ``per_plaintext`` slots of ``width`` bits into each big integer (slot 0 lowest)."""
    ints = np.asarray(ints, dtype=np.uint64)
    if ints.size and int(ints.max()) >> width:
        raise ValueError(f"a value does not fit in {width} bits")
    out = []
    for start in range(0, len(ints), per_plaintext):
        acc = 0
        for v in reversed(ints[start : start + per_plaintext].tolist()):
            acc = (acc << width) | v
        out.append(acc)
    return out


def unpack(packed: list[int], *, width: int, per_plaintext: int, n_values: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``n_values`` slots, as Python ints in a uint64 array."""
    mask = (1 << width) - 1
    out = np.zeros(n_values, dtype=np.uint64)
    i = 0
    for acc in packed:
        for _ in range(per_plaintext):
            if i == n_values:
                return out
            out[i] = acc & mask
            acc >>= width
            i += 1
    if i != n_values:
        raise ValueError(f"packed data holds {i} values, expected {n_values}")
    return out


class Keyring(ABC):
    """The sites' key material (secret included). Never given to the coordinator."""

    scheme: str
    security_bits: int  # the security level the parameters give (stated in the run's report)

    @abstractmethod
    def public(self) -> bytes:
        """What the coordinator needs to add ciphertexts: no secret key."""

    @abstractmethod
    def encrypt(self, vector: np.ndarray) -> bytes: ...

    @abstractmethod
    def decrypt(self, ciphertext: bytes, *, n_values: int, count: int) -> np.ndarray:
        """The sum of ``count`` encrypted vectors of ``n_values`` floats."""

    @property
    def key_id(self) -> str:
        return key_id(self.public())


class Aggregator(ABC):
    """The coordinator's side: adds ciphertexts under the public material only."""

    security_bits: int  # the level the public parameters give (a deployed coordinator has no keyring to ask)

    def __init__(self, public: bytes) -> None:
        self.key_id = key_id(public)

    @abstractmethod
    def check(self, ciphertext: bytes, *, n_values: int) -> str | None:
        """Why ``ciphertext`` cannot be added (truncated or malformed), or None.

        A ciphertext under another key of the same size usually passes: the
        coordinator catches a foreign key by the key id the reply carries.
        """

    @abstractmethod
    def add(self, ciphertexts: list[bytes]) -> bytes: ...


SCHEMES = ("paillier", "ckks", "stream")


def _keyring_class(scheme: str) -> type[Keyring]:
    from privmed.privacy.he_ckks import CKKSKeyring
    from privmed.privacy.he_paillier import PaillierKeyring
    from privmed.privacy.he_stream import StreamKeyring

    classes = {"paillier": PaillierKeyring, "ckks": CKKSKeyring, "stream": StreamKeyring}
    if scheme not in classes:
        raise PrivmedError(f"unknown HE scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    return classes[scheme]


def make_keyring(scheme: str, *, n_sites: int, **params) -> Keyring:
    return _keyring_class(scheme)(max_summands=n_sites, **params)


KEYRING_MAX_BYTES = 64 << 20  # a CKKS context with its secret key is a few MB


def write_keyring(path: str | Path, scheme: str, *, n_sites: int, **params) -> Path:
    """Make the sites' shared keyring (secret key included) into ``path``, 0600.

    On a deployment every site loads this one file (option ``keyring_file``), made once and handed to the
    hospitals out of band like the SNT key file; the coordinator never gets it.
    """
    from privmed.files import private_writer

    keyring = make_keyring(scheme, n_sites=n_sites, **params)
    with private_writer(path) as fh:
        fh.write(keyring.secret())
    return Path(path)


def load_keyring(path: str | Path, scheme: str) -> Keyring:
    """The sites' shared keyring from ``path`` (checked as a secret file: this user's, mode 600 or stricter)."""
    from privmed.files import read_private

    cls = _keyring_class(scheme)
    make = f"create one with privmed.privacy.he.write_keyring(path, {scheme!r}, n_sites=...)"
    raw = read_private(path, what="HE keyring file", max_bytes=KEYRING_MAX_BYTES, make=make)
    try:
        return cls.from_secret(raw)
    except Exception as exc:  # not JSON, not a TenSEAL context, another scheme's file
        raise PrivmedError(f"{path} is not a he-{scheme} keyring file ({type(exc).__name__}); {make}") from None


def make_aggregator(scheme: str, public: bytes) -> Aggregator:
    from privmed.privacy.he_ckks import CKKSAggregator
    from privmed.privacy.he_paillier import PaillierAggregator
    from privmed.privacy.he_stream import StreamAggregator

    classes = {"paillier": PaillierAggregator, "ckks": CKKSAggregator, "stream": StreamAggregator}
    if scheme not in classes:
        raise PrivmedError(f"unknown HE scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    return classes[scheme](public)
