"""CKKS with TenSEAL for :mod:`privmed.privacy.he`, parameters for addition only.

Paper: Cheon, Kim, Kim, Song 2017, "Homomorphic encryption for arithmetic of
approximate numbers" (ASIACRYPT; CKKS). Mechanism: a vector of reals is
encoded, scaled by ``2**scale_bits``, into a polynomial and encrypted; adding
ciphertexts adds the vectors, and decryption returns them with a small error.
Faithful: CKKS encryption and homomorphic addition, as implemented by
Microsoft SEAL through TenSEAL. Differs: SEAL implements the RNS variant of
CKKS (Cheon et al. 2018), not the 2017 multi-precision one; and aggregation
needs no multiplication, so there are no rescaling levels: one data prime and
SEAL's special prime, coefficient moduli [40, 40] bits (80 bits in all:
within SEAL's 128-bit security bound of 109 bits for N=4096, and of the
larger bounds for N=8192 and 16384). Security from the parameters (the HE
standard's tables): 128 bits at N=4096, 256 at 8192 and 16384
(``security_bits``, stated in the run's report).

Parameters are validated, since a bad choice fails silently: a decrypted sum
wraps modulo the 40-bit data prime q once it exceeds q/2. Every encrypted
value must have magnitude <= ``MAX_ABS`` (4: the CNN's weights and GroupNorm
gains, weighted by ``n_i / N``, stay well inside; a site's larger value is
refused before encryption and its update rejected), so a sum of up to
``max_summands`` (the number of sites) ciphertexts is below
``max_summands * MAX_ABS``. ``scale_bits`` must leave that sum below
``2**(data_bits - 3)``, under q/2 with one bit to spare for noise: with 4
sites, scale_bits <= 33; the default 2**30 holds up to 32 sites. Measured
decryption error at scale 2**30: ~1e-5. ``poly_modulus_degree`` is 4096
(2048 slots per ciphertext), 8192 or 16384 (smaller degrees cannot hold the
80-bit modulus securely; SEAL refuses them).

The coordinator receives the context with ``make_context_public()`` applied:
public key only, no secret, Galois or relinearisation keys (TenSEAL
refuses to decrypt with it: ``has_secret_key()`` is False).
"""

from __future__ import annotations

import json
import math

import numpy as np
import tenseal as ts

from privmed.errors import PrivmedError
from privmed.privacy.he import Aggregator, Keyring

POLY_MODULUS_DEGREES = (4096, 8192, 16384)
POLY_MODULUS_DEGREE = 4096
COEFF_MOD_BIT_SIZES = (40, 40)  # the data prime, then SEAL's special prime
SCALE_BITS = 30
MIN_SCALE_BITS = 20  # measured decryption error at 2**20: 3e-3 per value; it doubles with each bit less
MAX_ABS = 4.0


# The HE standard (Albrecht et al. 2018, Tables 1-3, ternary secret): the largest total coefficient modulus (bits)
# of each poly_modulus_degree at 256, 192 and 128 bits of classical security
HE_STANDARD_MAX_MODULUS = {256: {4096: 58, 8192: 118, 16384: 237}, 192: {4096: 75, 8192: 152, 16384: 305}}
HE_STANDARD_MAX_MODULUS[128] = {4096: 109, 8192: 218, 16384: 438}


def security_bits(poly_modulus_degree: int, modulus_bits: int = sum(COEFF_MOD_BIT_SIZES)) -> int:
    """The HE standard's security level for this degree and total modulus (N=4096 with 80 bits: 128)."""
    return next((s for s, bound in HE_STANDARD_MAX_MODULUS.items() if modulus_bits <= bound[poly_modulus_degree]), 0)


def max_scale_bits(max_summands: int) -> int:
    """The largest scale at which a sum of ``max_summands`` values of magnitude <= MAX_ABS cannot wrap."""
    return COEFF_MOD_BIT_SIZES[0] - 3 - math.ceil(math.log2(max(max_summands, 1) * MAX_ABS))


def _whole(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


class CKKSKeyring(Keyring):
    scheme = "ckks"

    def __init__(
        self,
        *,
        max_summands: int,
        poly_modulus_degree: int = POLY_MODULUS_DEGREE,
        scale_bits: int = SCALE_BITS,
        context: bytes | None = None,
    ) -> None:
        if not _whole(poly_modulus_degree) or int(poly_modulus_degree) not in POLY_MODULUS_DEGREES:
            raise PrivmedError(
                f"CKKS poly_modulus_degree must be one of {', '.join(map(str, POLY_MODULUS_DEGREES))} "
                f"(got {poly_modulus_degree})"
            )
        hi = max_scale_bits(max_summands)
        if not _whole(scale_bits) or not MIN_SCALE_BITS <= int(scale_bits) <= hi:
            raise PrivmedError(
                f"CKKS scale_bits must be a whole number from {MIN_SCALE_BITS} to {hi} for {max_summands} sites "
                f"(a sum of {max_summands} values up to {MAX_ABS:g} must stay below the "
                f"{COEFF_MOD_BIT_SIZES[0]}-bit modulus), got {scale_bits}"
            )
        self.max_summands = int(max_summands)
        if context is not None:  # the sites' shared keyring file (a deployment): the same secret key at every site
            self._ctx = ts.context_from(context)
        else:
            self._ctx = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=int(poly_modulus_degree),
                coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
            )
            self._ctx.global_scale = 2.0 ** int(scale_bits)
        self._params = {"poly_modulus_degree": int(poly_modulus_degree), "scale_bits": int(scale_bits)}
        self.security_bits = security_bits(int(poly_modulus_degree))
        self._slots = int(poly_modulus_degree) // 2  # one ciphertext per poly_modulus_degree/2 values (the CKKS slots)
        pub = self._ctx.copy()
        pub.make_context_public()
        self._public = pub.serialize()

    def public(self) -> bytes:
        return self._public

    def secret(self) -> bytes:
        head = json.dumps({"scheme": self.scheme, "max_summands": self.max_summands, **self._params}).encode()
        return join([head, self._ctx.serialize(save_secret_key=True)])

    @classmethod
    def from_secret(cls, raw: bytes) -> CKKSKeyring:
        head, context = split(raw)
        d = json.loads(head)
        return cls(
            max_summands=int(d["max_summands"]),
            poly_modulus_degree=int(d["poly_modulus_degree"]),
            scale_bits=int(d["scale_bits"]),
            context=context,
        )

    def encrypt(self, vector: np.ndarray) -> bytes:
        v = np.asarray(vector, dtype=np.float64)
        if v.size and not np.abs(v).max() <= MAX_ABS:  # also refuses NaN
            raise PrivmedError(
                f"a value of magnitude {np.abs(v).max():.3g} exceeds the CKKS bound {MAX_ABS:g}: "
                f"a sum of {self.max_summands} such values could wrap; not encrypted"
            )
        slots = self._slots
        return join([ts.ckks_vector(self._ctx, v[i : i + slots].tolist()).serialize() for i in range(0, v.size, slots)])

    def decrypt(self, ciphertext: bytes, *, n_values: int, count: int) -> np.ndarray:
        if count > self.max_summands:
            raise PrivmedError(f"a sum of {count} updates may have wrapped a modulus sized for {self.max_summands}")
        parts = [ts.ckks_vector_from(self._ctx, c).decrypt() for c in split(ciphertext)]
        out = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]) if parts else np.zeros(0)
        if out.size != n_values:
            raise PrivmedError(f"CKKS ciphertext holds {out.size} values, expected {n_values}")
        return out


class CKKSAggregator(Aggregator):
    """Holds a public TenSEAL context; refuses one that carries the secret key."""

    def __init__(self, public: bytes) -> None:
        super().__init__(public)
        self.context = ts.context_from(public)
        if self.context.has_secret_key():
            raise PrivmedError(
                "the coordinator was given a CKKS context with the secret key; give it the public context only"
            )
        parms = self.context.seal_context().data.key_context_data()
        self.security_bits = security_bits(parms.parms().poly_modulus_degree(), parms.total_coeff_modulus_bit_count())

    def check(self, ciphertext: bytes, *, n_values: int) -> str | None:
        try:
            size = sum(ts.ckks_vector_from(self.context, c).size() for c in split(ciphertext))
        except Exception as exc:  # TenSEAL raises ValueError/RuntimeError on bad streams
            return f"CKKS ciphertext does not parse under this context ({exc})"
        if size != n_values:
            return f"CKKS ciphertext holds {size} values, expected {n_values}"
        return None

    def add(self, ciphertexts: list[bytes]) -> bytes:
        acc = [ts.ckks_vector_from(self.context, c) for c in split(ciphertexts[0])]
        for ct in ciphertexts[1:]:
            for a, c in zip(acc, split(ct), strict=True):
                a += ts.ckks_vector_from(self.context, c)
        return join([a.serialize() for a in acc])


def join(parts: list[bytes]) -> bytes:
    """Length-prefixed concatenation of serialised ciphertexts."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def split(blob: bytes) -> list[bytes]:
    """Inverse of :func:`join`; a truncated blob raises ValueError."""
    parts, i = [], 0
    while i < len(blob):
        n = int.from_bytes(blob[i : i + 4], "big")
        if i + 4 + n > len(blob):
            raise ValueError("truncated ciphertext stream")
        parts.append(blob[i + 4 : i + 4 + n])
        i += 4 + n
    return parts
