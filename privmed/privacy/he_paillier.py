"""Packed Paillier (``phe`` with ``gmpy2``) for :mod:`privmed.privacy.he`.

Papers: Paillier 1999 (the cryptosystem); packing after BatchCrypt (Zhang
et al. 2020, USENIX ATC). Each site's weighted update is clipped to
[-clip, clip] (default 2.0: the CNN's weights and GroupNorm gains stay well
inside), quantised to ``bits`` (default 20) unsigned integers in offset
binary, and ``per_plaintext`` of them are laid side by side in one Paillier
plaintext, each in a slot of ``bits + ceil(log2 n_sites)`` bits, so the sum
of all sites' values can never carry into the next slot (the sum of n values
below 2**bits is below n * 2**bits). With a 2048-bit key and 4 sites: 22-bit
slots, 93 values per ciphertext of 512 bytes, i.e. 1.38x the float32
plaintext. Adding two ciphertexts (a product modulo n**2) adds every slot at
once; the decoded sum of ``count`` contributions subtracts ``count * clip``.
Quantisation step: 2*clip / (2**bits - 1) = 3.8e-6 by default.

Faithful: standard Paillier encryption and decryption (interoperable with
``phe``); BatchCrypt's idea of quantising, packing many values per
plaintext with headroom for the sum, and adding packed ciphertexts.
Security from the parameters (NIST SP 800-57): a 2048-bit modulus gives 112
bits, 3072 bits 128 (``security_bits``, stated in the run's report). With 20
sites the slots grow to 25 bits and 2048-bit ciphertexts reach 1.59x the
float32 plaintext, above 1.5x; ``bits=18`` keeps them at 1.44x.
Differs from BatchCrypt: values are unsigned offset binary ([-clip, clip]
mapped to [0, 2**bits - 1]) with ceil(log2 n_sites) headroom bits per slot,
not BatchCrypt's signed integers with sign bits and zero padding; the
decoder subtracts ``count * clip`` instead of reading signs. The clipping
range is a fixed parameter, not BatchCrypt's analytically chosen threshold
(dACIQ), and the values packed are whole weighted models, not gradients.

``phe`` provides key generation and CRT decryption; packing, the
fixed-width wire format and the coordinator's ciphertext product are written
here because ``phe`` encodes one float per ciphertext (one modular
exponentiation per parameter). Encryption is also written here: the sites
hold the factors p, q, so they compute the obfuscator r**n mod n**2 by CRT
modulo p**2 and q**2 (half-size moduli; measured 1.8-2x faster than
``phe``'s ``raw_encrypt``, which only uses the public key). The ciphertext
is the standard (1 + n*m) * r**n mod n**2, decrypted by ``phe``.
"""

from __future__ import annotations

import json
import secrets

import gmpy2
import numpy as np
import phe

from privmed.errors import PrivmedError
from privmed.privacy.he import Aggregator, Keyring, dequantise, pack, quantise, slot_bits, unpack

# NIST SP 800-57 Part 1 Rev. 5, Table 2: security bits of a factoring modulus of at least this many bits
NIST_MODULUS_SECURITY = ((15360, 256), (7680, 192), (3072, 128), (2048, 112), (1024, 80))


def security_bits(key_bits: int) -> int:
    """The security level NIST SP 800-57 gives a modulus of ``key_bits`` bits (2048 -> 112, 3072 -> 128)."""
    return next((s for b, s in NIST_MODULUS_SECURITY if key_bits >= b), 0)


def _layout(public: dict) -> tuple[int, int, int]:
    """(slot width, values per plaintext, bytes per ciphertext) of a public description."""
    n = int(public["n"], 16)
    width = slot_bits(bits=public["bits"], max_summands=public["max_summands"])
    per = (n.bit_length() - 1) // width
    return width, per, 2 * ((n.bit_length() + 7) // 8)


class PaillierKeyring(Keyring):
    scheme = "paillier"

    def __init__(
        self,
        *,
        max_summands: int,
        key_bits: int = 2048,
        bits: int = 20,
        clip: float = 2.0,
        primes: tuple[int, int] | None = None,
    ) -> None:
        if key_bits < 1024 or not 4 <= bits <= 52 or not clip > 0:
            raise PrivmedError(
                f"Paillier needs key_bits >= 1024, 4 <= bits <= 52, clip > 0 (got {key_bits}, {bits}, {clip})"
            )
        if primes is None:
            self._pk, self._sk = phe.generate_paillier_keypair(n_length=key_bits)
        else:  # the sites' shared keyring file (a deployment): the same secret key at every site
            self._pk = phe.PaillierPublicKey(primes[0] * primes[1])
            self._sk = phe.PaillierPrivateKey(self._pk, *primes)
        self.key_bits = int(key_bits)
        self.security_bits = security_bits(self._pk.n.bit_length())
        self.bits, self.clip = int(bits), float(clip)
        self._desc = {
            "scheme": self.scheme,
            "n": format(self._pk.n, "x"),
            "bits": self.bits,
            "clip": self.clip,
            "max_summands": int(max_summands),
        }
        self.width, self.per_plaintext, self.ct_bytes = _layout(self._desc)
        p, q = gmpy2.mpz(self._sk.p), gmpy2.mpz(self._sk.q)
        self._crt = (p * p, q * q, self._pk.n % (p * (p - 1)), self._pk.n % (q * (q - 1)), gmpy2.invert(p * p, q * q))

    def _encrypt_int(self, m: int) -> int:
        """(1 + n*m) * r**n mod n**2, with r**n computed by CRT from the secret factors."""
        p2, q2, ep, eq, p2_inv = self._crt
        n, n2 = self._pk.n, self._pk.nsquare
        r = secrets.randbelow(n - 1) + 1
        xp, xq = gmpy2.powmod(r % p2, ep, p2), gmpy2.powmod(r % q2, eq, q2)
        obfuscator = xp + p2 * (((xq - xp) * p2_inv) % q2)
        return int((1 + n * m) % n2 * obfuscator % n2)

    def public(self) -> bytes:
        return json.dumps(self._desc, sort_keys=True).encode()

    def secret(self) -> bytes:
        return json.dumps(
            {
                "scheme": self.scheme,
                "p": format(self._sk.p, "x"),
                "q": format(self._sk.q, "x"),
                "key_bits": self.key_bits,
                "bits": self.bits,
                "clip": self.clip,
                "max_summands": self._desc["max_summands"],
            }
        ).encode()

    @classmethod
    def from_secret(cls, raw: bytes) -> PaillierKeyring:
        d = json.loads(raw)
        return cls(
            max_summands=int(d["max_summands"]),
            key_bits=int(d["key_bits"]),
            bits=int(d["bits"]),
            clip=float(d["clip"]),
            primes=(int(d["p"], 16), int(d["q"], 16)),
        )

    def encrypt(self, vector: np.ndarray) -> bytes:
        q = quantise(vector, clip=self.clip, bits=self.bits)
        plains = pack(q, width=self.width, per_plaintext=self.per_plaintext)
        return b"".join(self._encrypt_int(p).to_bytes(self.ct_bytes, "big") for p in plains)

    def decrypt(self, ciphertext: bytes, *, n_values: int, count: int) -> np.ndarray:
        if count > self._desc["max_summands"]:
            raise PrivmedError(
                f"a sum of {count} updates may have overflowed slots sized for {self._desc['max_summands']}"
            )
        b = self.ct_bytes
        plains = [
            self._sk.raw_decrypt(int.from_bytes(ciphertext[i : i + b], "big")) for i in range(0, len(ciphertext), b)
        ]
        sums = unpack(plains, width=self.width, per_plaintext=self.per_plaintext, n_values=n_values)
        return dequantise(sums, clip=self.clip, bits=self.bits, count=count)


class PaillierAggregator(Aggregator):
    """Holds the public modulus n only."""

    def __init__(self, public: bytes) -> None:
        super().__init__(public)
        desc = json.loads(public)
        self.n = int(desc["n"], 16)
        self.nsquare = gmpy2.mpz(self.n) ** 2
        self.security_bits = security_bits(self.n.bit_length())
        _, self.per_plaintext, self.ct_bytes = _layout(desc)

    def check(self, ciphertext: bytes, *, n_values: int) -> str | None:
        expected = -(-n_values // self.per_plaintext) * self.ct_bytes
        if len(ciphertext) != expected:
            return (
                f"Paillier ciphertext has {len(ciphertext)} bytes, expected {expected} (truncated or another key size)"
            )
        for i in range(0, len(ciphertext), self.ct_bytes):
            c = int.from_bytes(ciphertext[i : i + self.ct_bytes], "big")
            if not 0 < c < self.nsquare or gmpy2.gcd(c, self.n) != 1:
                return "Paillier ciphertext is not a unit modulo n^2 (corrupted)"
        return None

    def add(self, ciphertexts: list[bytes]) -> bytes:
        b = self.ct_bytes
        acc = [gmpy2.mpz(int.from_bytes(ciphertexts[0][i : i + b], "big")) for i in range(0, len(ciphertexts[0]), b)]
        for ct in ciphertexts[1:]:
            for j, i in enumerate(range(0, len(ct), b)):
                acc[j] = (acc[j] * int.from_bytes(ct[i : i + b], "big")) % self.nsquare
        return b"".join(int(a).to_bytes(b, "big") for a in acc)
