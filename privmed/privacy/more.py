"""MORE: Matrix Operation for Randomization or Encryption, and its ring arithmetic as batched torch ops.

Paper: Kipnis & Hibshoosh 2012 (IACR ePrint 2012/637), as used by Vizitiu et
al. 2019 ("Towards privacy-preserving deep learning based medical imaging
applications", MeMeA) to train a CNN on encrypted images. A real number m is
encrypted as ``C = S · diag(m, r) · S⁻¹`` with a secret invertible 2×2 matrix
S (the key) and a fresh random r per value; ``[S⁻¹ C S]₀₀ = m`` decrypts.
Every ciphertext under one key lies in the algebra ``S·diag(·,·)·S⁻¹``, which
is commutative and isomorphic to pairs (m, r) with component-wise + and ×:
sums and products of ciphertexts are ciphertexts of sums and products, so a
network whose operations are additions, multiplications and multiplications
by public constants (convolutions, dense layers, average pooling, polynomial
activations, a squared-error loss and its gradient) runs on ciphertexts.

Faithful: the float (non-modular) variant Vizitiu used; 2×2 keys; fresh r
per encrypted value; ciphertexts are tensors of shape ``(..., 2, 2)``.
Differs: Vizitiu's implementation is not public; here every layer is one
batched torch op on the ciphertexts' four entries (see :func:`conv2d`), and
the key is drawn well conditioned (``cond(S) <= MAX_COND``) because the
decryption error grows with cond(S). Written by hand: no maintained library
implements MORE (TenSEAL, OpenFHE and SEAL implement lattice schemes).

**MORE is not semantically secure.** ``C − m·I = (r − m)·s₂·t₂ᵀ`` has rank
one: one known plaintext/ciphertext pair gives S's columns up to scale (which
cancels in decryption), and every ciphertext shares S's eigenvectors, so the
ciphertexts alone give the key up to the order of its columns
(:mod:`privmed.attacks.more_key_recovery`). privmed ships it to reproduce
Vizitiu et al. and to show why.

Layouts. The wire and storage layout is entry-last: a tensor of values of
shape ``X`` encrypts to ``X + (k, k)``. Inside a network, activations are kept
in the *block* layout ``(N, k, C, k, H, W)``: reshaped to ``(N·k, C·k, H, W)``
a batch of ciphertext images is an ordinary image batch, and a ring
convolution is one :func:`torch.nn.functional.conv2d` (derivation in
:func:`conv2d`). ``k = 1`` is plaintext: the same code then performs the
ordinary network's arithmetic, which is how the benchmark compares the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from privmed.privacy.randomness import numpy_noise_generator

MAX_COND = 4.0  # the key's condition number is at most this (decryption error grows with it)
R_RANGE = (0.0, 1.0)  # r is uniform on this interval (the data's own range: the r half stays as tame as the m half)


@dataclass(frozen=True)
class MoreKey:
    """The secret key S (2×2) and its inverse, float64."""

    s: torch.Tensor
    s_inv: torch.Tensor

    @property
    def key_id(self) -> str:
        """A public fingerprint of the key (so a ciphertext under another key is refused), not the key."""
        import hashlib

        return hashlib.sha256(self.s.numpy().tobytes()).hexdigest()[:16]


def keygen(rng: np.random.Generator | None = None, *, max_cond: float = MAX_COND) -> MoreKey:
    """A random invertible 2×2 key with ``cond(S) <= max_cond``, from a secret-seeded generator by default."""
    if not max_cond > 1:
        raise ValueError(f"max_cond must be > 1, got {max_cond}")
    rng = rng or numpy_noise_generator(None)
    while True:
        s = rng.standard_normal((2, 2))
        if np.linalg.cond(s) <= max_cond:
            s_t = torch.from_numpy(s)
            return MoreKey(s_t, torch.linalg.inv(s_t))


def encrypt(
    key: MoreKey,
    m: torch.Tensor,
    rng: np.random.Generator | None = None,
    *,
    r_range: tuple[float, float] = R_RANGE,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``S · diag(m, r) · S⁻¹`` for every value of ``m``, a fresh r each (secret-seeded generator by default)."""
    rng = rng or numpy_noise_generator(None)
    m = m.to(torch.float64)
    r = torch.from_numpy(rng.uniform(*r_range, size=tuple(m.shape)))
    d = torch.diag_embed(torch.stack([m, r], dim=-1))
    return (key.s @ d @ key.s_inv).to(dtype)


def decrypt(key: MoreKey, c: torch.Tensor) -> torch.Tensor:
    """``[S⁻¹ C S]₀₀`` of every ciphertext (float64)."""
    return (key.s_inv @ c.to(torch.float64) @ key.s)[..., 0, 0]


def decrypt_with(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Decryption under any candidate key matrix (an attacker's): ``[S⁻¹ C S]₀₀``."""
    s = s.to(torch.float64)
    return (torch.linalg.inv(s) @ c.to(torch.float64) @ s)[..., 0, 0]


def encode(x: torch.Tensor, k: int = 2) -> torch.Tensor:
    """A public value as a ciphertext of itself under every key: ``x · I`` (entry-last layout)."""
    return x[..., None, None] * torch.eye(k, dtype=x.dtype)


def transpose(c: torch.Tensor) -> torch.Tensor:
    return c.transpose(-1, -2)


# ----------------------------------------------------------------------------- layouts


def to_blocks(c: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W, k, k)`` → block layout ``(N, k, C, k, H, W)``; ``(N, C, k, k)`` → ``(N, k, C, k)``."""
    if c.dim() == 6:
        return c.permute(0, 4, 1, 5, 2, 3).contiguous()
    return c.permute(0, 2, 1, 3).contiguous()


def from_blocks(b: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_blocks`."""
    if b.dim() == 6:
        return b.permute(0, 2, 4, 5, 1, 3).contiguous()
    return b.permute(0, 2, 1, 3).contiguous()


# ----------------------------------------------------------------------------- ring operations (block layout)


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, *, padding: int = 0) -> torch.Tensor:
    """Ring convolution: ``y[n,o] = Σ_{c,dy,dx} x[n,c,·+dy,·+dx] · w[o,c,dy,dx] + b[o]`` with · the 2×2 product.

    Entry-wise, ``(X·W)_ac = Σ_b X_ab W_bc``: the input's row index a rides in
    the batch, its column index b joins the channels, and the weight's
    ``(o, c)`` block ``W_bc`` becomes the kernel from input channel ``(c, b)``
    to output channel ``(o, c')``. One conv2d of batch N·k, C·k → O·k
    channels (k³ = 8 times the plaintext multiply-adds) computes all four
    entries. ``x``: block layout ``(N, k, C, k, H, W)``; ``w``: entry-last
    ``(O, C, kh, kw, k, k)``; ``b``: ``(O, k, k)``; returns block layout.
    """
    n, k, c, _, h, wd = x.shape
    o = w.shape[0]
    kernel = w.permute(0, 5, 1, 4, 2, 3).reshape(o * k, c * k, w.shape[2], w.shape[3])
    y = F.conv2d(x.reshape(n * k, c * k, h, wd), kernel, padding=padding)
    y = y.reshape(n, k, o, k, *y.shape[-2:])
    if b is not None:
        y = y + b.permute(1, 0, 2)[None, :, :, :, None, None]
    return y


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Ring dense layer ``y[n,o] = Σ_i x[n,i] · w[o,i] + b[o]`` as one block-matrix product.

    ``x``: block layout ``(N, k, I, k)``; ``w``: entry-last ``(O, I, k, k)``.
    """
    n, k, i, _ = x.shape
    o = w.shape[0]
    y = (x.reshape(n * k, i * k) @ w.permute(1, 2, 0, 3).reshape(i * k, o * k)).reshape(n, k, o, k)
    if b is not None:
        y = y + b.permute(1, 0, 2)[None]
    return y


def square(x: torch.Tensor) -> torch.Tensor:
    """``X · X`` entry by entry for a block-layout tensor (any trailing spatial dims)."""
    k = x.shape[1]
    return sum(x[:, :, :, j].unsqueeze(3) * x[:, j].unsqueeze(1) for j in range(k))


def avg_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    n, k, c, _, h, w = x.shape
    return F.avg_pool2d(x.reshape(n * k, c * k, h, w), size).reshape(n, k, c, k, h // size, w // size)


def adaptive_avg_pool2d(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Torch's adaptive average pooling of every entry (means over pixel blocks: public constants)."""
    n, k, c, _, h, w = x.shape
    y = F.adaptive_avg_pool2d(x.reshape(n * k, c * k, h, w), size)
    return y.reshape(n, k, c, k, *y.shape[-2:])


def trace_sum(x: torch.Tensor) -> torch.Tensor:
    """The ring sum of every ciphertext of a block-layout tensor: one ``(k, k)`` ciphertext."""
    return x.sum(dim=(0, 2, *range(4, x.dim())))
