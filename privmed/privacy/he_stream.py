"""Additively homomorphic stream-cipher encryption (CMT) for :mod:`privmed.privacy.he`: HE-FedAvg at ~1x the bytes.

Papers: Castelluccia, Mykletun, Tsudik 2005, "Efficient aggregation of
encrypted data in wireless sensor networks" (MobiQuitous; the CMT scheme);
its security proof, Castelluccia, Chan, Mykletun, Tsudik 2009 (ACM TOSN
5(3)): the scheme is semantically secure (IND-CPA) for the aggregator when
the keystream is a pseudorandom function of the key. Mechanism: a value m in
[0, M) is encrypted as c = m + k mod M, k a fresh keystream word; the
aggregator adds ciphertexts mod M, and whoever holds the key subtracts the
sum of the contributors' keystreams from the sum of ciphertexts, leaving the
sum of plaintexts (exact, as long as that sum stays below M).

Here: each site's weighted update is quantised as for packed Paillier
(:func:`privmed.privacy.he.quantise`: ``[-clip, clip]`` onto ``bits``-bit
offset-binary integers), M = 2**32, one value per little-endian uint32, and
the keystream is ChaCha20 (RFC 8439, from ``cryptography``) under the sites'
shared 256-bit key with a fresh random 96-bit nonce per ciphertext. A site's
ciphertext is ``nonce || (q + keystream) mod 2**32``: 4 bytes per weight plus
12 bytes, i.e. 1.0x the float32 plaintext. The coordinator's sum is the
contributors' nonces followed by the word-wise sum; the sites regenerate each
nonce's keystream (a few tens of microseconds per 14 k weights) and subtract.

Overflow is impossible by the parameters: the constructor refuses
``bits + ceil(log2 max_summands) > 32``, so a sum of ``max_summands``
quantised values (each below ``2**bits``) stays below ``2**32``; ``encrypt``
refuses a value beyond ``clip`` (the site's update is then rejected, not
silently clipped) and ``decrypt`` refuses a sum of more than
``max_summands`` contributions or the same nonce twice (a replayed
ciphertext). Defaults: ``bits=24`` (step 2*clip/(2**24 - 1) = 4.8e-7 at
``clip=4``, the CKKS bound), headroom for up to 256 sites.

Security, from the parameters: a 256-bit ChaCha20 key drawn from the
operating system's CSPRNG (:func:`privmed.privacy.randomness.secret_bytes`,
never the run seed); ChaCha20's designed security level is 256 bits, so the
claim stated in the run's report is 256 bits (>= the 112 asked); IND-CPA
also needs nonces never to repeat under one key: with random 96-bit nonces
the chance of any repeat among 2**32 ciphertexts is below 2**-33.

Faithful: CMT's encryption c = m + k mod M, aggregation by modular addition,
and decryption by subtracting the contributors' keystream sum. Differs: CMT
gives every sensor its own key shared with the sink; here the sites share one
key (Aono et al.'s key model, as for Paillier and CKKS), and a fresh random
nonce per ciphertext makes each keystream single-use (CMT derives it from a
node key and an epoch counter); the contributors are named by their nonces,
carried with the sum, instead of by node IDs. Differs from the public-key
schemes: the coordinator holds no key at all (it only adds words mod 2**32),
and whoever holds the key can also decrypt a single site's ciphertext, as
with the shared Paillier/CKKS secret key. Written by hand because neither
``phe`` nor TenSEAL offers a secret-key additive scheme; the keystream is
``cryptography``'s ChaCha20, the arithmetic is NumPy's uint32 wrap-around.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from privmed.errors import PrivmedError
from privmed.privacy.he import Aggregator, Keyring, dequantise, quantise, slot_bits
from privmed.privacy.randomness import secret_bytes

WORD_BITS = 32
NONCE_BYTES = 12  # ChaCha20's 96-bit nonce (RFC 8439); the 32-bit block counter starts at 0
KEY_BYTES = 32
SECURITY_BITS = 256  # ChaCha20's key length and designed security level
BITS, CLIP = 24, 4.0


def keystream(key: bytes, nonce: bytes, n_values: int) -> np.ndarray:
    """``n_values`` little-endian uint32 words of ChaCha20 keystream under ``key`` and ``nonce``."""
    enc = Cipher(algorithms.ChaCha20(key, b"\0\0\0\0" + nonce), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n_values)), dtype="<u4")


def _words(blob: bytes, n_values: int) -> tuple[list[bytes], np.ndarray]:
    """(nonces, words) of a ciphertext or a sum: ``k`` 12-byte nonces followed by ``n_values`` uint32 words."""
    head = len(blob) - 4 * n_values
    if head < NONCE_BYTES or head % NONCE_BYTES:
        raise ValueError(
            f"stream ciphertext has {len(blob)} bytes, expected {4 * n_values} + 12 per contributor "
            f"(truncated or another model size)"
        )
    nonces = [blob[i : i + NONCE_BYTES] for i in range(0, head, NONCE_BYTES)]
    return nonces, np.frombuffer(blob, dtype="<u4", offset=head)


class StreamKeyring(Keyring):
    scheme = "stream"

    def __init__(self, *, max_summands: int, bits: int = BITS, clip: float = CLIP, key: bytes | None = None) -> None:
        headroom = slot_bits(bits=0, max_summands=max_summands)
        whole = isinstance(bits, (int, float)) and not isinstance(bits, bool) and float(bits).is_integer()
        if not whole or not 4 <= bits <= WORD_BITS - headroom:
            raise PrivmedError(
                f"he-stream bits must be a whole number from 4 to {WORD_BITS - headroom} for {max_summands} sites "
                f"(a sum of {max_summands} values of `bits` bits must fit in {WORD_BITS}), got {bits!r}"
            )
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip < math.inf:
            raise PrivmedError(
                f"he-stream clip must be a positive number (weights are encrypted in ±clip), got {clip!r}"
            )
        self.max_summands, self.bits, self.clip = int(max_summands), int(bits), float(clip)
        self._key = secret_bytes(KEY_BYTES) if key is None else key
        if len(self._key) != KEY_BYTES:
            raise PrivmedError(f"he-stream key must be {KEY_BYTES} bytes, got {len(self._key)}")
        self.security_bits = SECURITY_BITS
        commitment = hmac.new(self._key, b"privmed he-stream key id", hashlib.sha256).hexdigest()[:32]
        self._public = json.dumps(
            {
                "scheme": self.scheme,
                "bits": self.bits,
                "clip": self.clip,
                "max_summands": self.max_summands,
                "key-commitment": commitment,
            },
            sort_keys=True,
        ).encode()

    def public(self) -> bytes:
        return self._public

    def secret(self) -> bytes:
        d = {"scheme": self.scheme, "key": self._key.hex(), "bits": self.bits, "clip": self.clip}
        return json.dumps({**d, "max_summands": self.max_summands}).encode()

    @classmethod
    def from_secret(cls, raw: bytes) -> StreamKeyring:
        d = json.loads(raw)
        return cls(
            max_summands=int(d["max_summands"]), bits=int(d["bits"]), clip=float(d["clip"]), key=bytes.fromhex(d["key"])
        )

    def encrypt(self, vector: np.ndarray) -> bytes:
        v = np.asarray(vector, dtype=np.float64)
        if v.size and not np.abs(v).max() <= self.clip:  # also refuses NaN
            raise PrivmedError(
                f"a value of magnitude {np.abs(v).max():.3g} exceeds he-stream's clip {self.clip:g} "
                "(raise --privacy-opt clip=...); not encrypted"
            )
        nonce = secret_bytes(NONCE_BYTES)
        q = quantise(v, clip=self.clip, bits=self.bits).astype("<u4")
        return nonce + (q + keystream(self._key, nonce, v.size)).astype("<u4").tobytes()  # uint32 wraps mod 2**32

    def decrypt(self, ciphertext: bytes, *, n_values: int, count: int) -> np.ndarray:
        if count > self.max_summands:
            raise PrivmedError(f"a sum of {count} updates may have overflowed words sized for {self.max_summands}")
        try:
            nonces, words = _words(ciphertext, n_values)
        except ValueError as exc:
            raise PrivmedError(str(exc)) from None
        if len(nonces) != count:
            raise PrivmedError(f"the encrypted sum names {len(nonces)} contributors, the coordinator says {count}")
        if len(set(nonces)) != len(nonces):
            raise PrivmedError("the encrypted sum holds one ciphertext twice (a repeated nonce): refused")
        sums = words.copy()
        for nonce in nonces:
            sums -= keystream(self._key, nonce, n_values)  # uint32 wraps mod 2**32
        return dequantise(sums, clip=self.clip, bits=self.bits, count=count)


class StreamAggregator(Aggregator):
    """Holds no key: adds ciphertext words mod 2**32 and keeps the contributors' nonces."""

    def __init__(self, public: bytes) -> None:
        super().__init__(public)
        if json.loads(public).get("scheme") != StreamKeyring.scheme:
            raise PrivmedError("he-stream aggregator needs he-stream public material")
        self.security_bits = SECURITY_BITS

    def check(self, ciphertext: bytes, *, n_values: int) -> str | None:
        if len(ciphertext) != NONCE_BYTES + 4 * n_values:
            return f"stream ciphertext has {len(ciphertext)} bytes, expected {NONCE_BYTES + 4 * n_values}"
        return None

    def add(self, ciphertexts: list[bytes]) -> bytes:
        n = (len(ciphertexts[0]) - NONCE_BYTES) // 4
        parts = [_words(c, n) for c in ciphertexts]
        total = np.sum([w for _, w in parts], axis=0, dtype=np.uint64) % (1 << WORD_BITS)
        return b"".join(nonce for nonces, _ in parts for nonce in nonces) + total.astype("<u4").tobytes()
