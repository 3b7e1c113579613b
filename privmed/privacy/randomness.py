"""Where privacy randomness comes from: secret entropy held by the party that adds the noise.

DP noise, DP sampling (Poisson batches, the sparse vector technique's draws)
and central DP noise are drawn from generators seeded from the operating
system's CSPRNG (:mod:`secrets`) by the party that adds them — each site for
DP-SGD, P3SGD and DSSGD's SVT, the aggregator for DP-FedAvg — never from the
run seed, which the coordinator chooses and sends and ``result.json``
records: anyone holding it could replay the noise and subtract it. Everything
else (data, initialisation, shuffling, node sampling) stays a function of the
run seed.

``--reproducible-noise`` (``RunConfig.reproducible_noise``) derives the noise
from the run seed again, for tests and debugging only; the result then says
``privacy.guarantee = "none: noise derived from the run seed"``.

What remains, stated plainly:

- The seeded generators are not cryptographic: PyTorch's Mersenne Twister and
  NumPy's PCG64 are seeded with 128 secret bits, which stops replay from the
  run seed, but a party that observes enough of one generator's raw output
  could in principle predict the rest of that stream. The noise itself is
  never released raw (only summed into updates), which makes that impractical
  here; a hardened deployment would draw noise from a CSPRNG.
- Floating-point Gaussian and Laplace sampling is not hardened against
  Mironov's (2012) precision attack on the least significant bits; neither is
  Opacus' default. Opacus' ``secure_mode`` would use ``torchcsprng``, which is
  unmaintained (its last release supports torch 1.x, not privmed's 2.13), so
  it is not used.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import numpy as np
import torch

NOT_PRIVATE = "none: noise derived from the run seed"


def secret_seed() -> int:
    """128 bits from the operating system's CSPRNG, held only by the caller."""
    return secrets.randbits(128)


def torch_noise_generator(reproducible_seed: int | None) -> torch.Generator:
    """A generator for DP noise and sampling: secret-seeded, unless a reproducible seed is given (not private)."""
    if reproducible_seed is not None:  # --reproducible-noise only: the result then says it is not private
        return torch.Generator().manual_seed(reproducible_seed)
    return torch.Generator().manual_seed(secret_seed() % (1 << 63))  # 63 secret bits: torch's seed range


def numpy_noise_generator(reproducible_seed: int | list[int] | None) -> np.random.Generator:
    """A NumPy generator for DP noise and sampling: secret-seeded, unless a reproducible seed is given (not private)."""
    return np.random.default_rng(secret_seed() if reproducible_seed is None else reproducible_seed)


@contextlib.contextmanager
def secret_global_numpy(enabled: bool = True) -> Iterator[None]:
    """Run a block whose library code draws from NumPy's global generator (Flower's DP noise) on a secret seed.

    The global stream is saved before and restored after, so the run's other
    global draws (seeded by the run seed) are exactly what they would have been.
    """
    if not enabled:
        yield
        return
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence(secret_seed()).generate_state(8))
    try:
        yield
    finally:
        np.random.set_state(saved)


def guarantee(*, reproducible: bool, statement: str) -> str:
    """What a DP result may claim: ``statement``, or that it is not private when the noise is reproducible."""
    return NOT_PRIVATE if reproducible else statement


def secret_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG, for keys and nonces (held only by the caller)."""
    return secrets.token_bytes(n)
