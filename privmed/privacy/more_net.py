"""A polynomial network trained on MORE ciphertexts, and its plaintext twin's training loop.

Paper: Vizitiu et al. 2019 (MeMeA) trained a CNN with polynomial activations
and a squared-error loss on MORE-encrypted images and one-hot labels; the
server never decrypts, and the weights it updates become ciphertexts.
Faithful: forward pass, squared-error loss against encrypted one-hot labels,
its gradient and the SGD (with momentum) update are all ring operations on
ciphertexts (:mod:`privmed.privacy.more`); initial weights are public values
``w·I``. Differs: the gradient is obtained with torch's autograd instead of a
hand-written ring backward pass. Autograd differentiates the real function
of the four matrix entries; seeded with the identity, its vector-Jacobian
products of matrix products (``G·Yᵀ``, ``Xᵀ·G``) stay in the transposed
algebra ``S⁻ᵀ·diag(·,·)·Sᵀ`` and return exactly the transpose of the ring
derivative (products of commuting matrices, transposed). One transpose per
parameter then gives the ring gradient — so the server computes it without
the key, and the test checks it against plaintext training.

What the server computes is, in the pair picture, two trainings at once: the
m half is exactly the plaintext network on the real data; the r half is the
same network trained on the random r's. Both share every operation, which is
why the m half's result is the plaintext result (up to float rounding,
amplified by cond(S)).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from privmed.errors import PrivmedError
from privmed.models import Poly
from privmed.privacy import more

Params = dict[str, torch.Tensor]


def ring_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's leaf layers in order, each one MORE can evaluate; PrivmedError naming the first it cannot."""
    out = []
    for name, mod in model.named_modules():
        if list(mod.children()):
            continue
        ok = (
            (isinstance(mod, nn.Conv2d) and mod.stride == (1, 1) and mod.groups == 1 and mod.dilation == (1, 1))
            or isinstance(mod, (Poly, nn.Flatten, nn.Linear))
            or (isinstance(mod, nn.AvgPool2d) and mod.kernel_size == mod.stride and not mod.padding)
            or isinstance(mod, nn.AdaptiveAvgPool2d)
        )
        if not ok:
            raise PrivmedError(
                f"layer {name} ({type(mod).__name__}) cannot run on MORE ciphertexts: only 2-D convolutions, dense "
                "layers, average pooling and polynomial activations can; use --model poly-cnn on 2-D images"
            )
        out.append((name, mod))
    return out


def forward(layers: list[tuple[str, nn.Module]], params: Params, x: torch.Tensor) -> torch.Tensor:
    """The network on block-layout ciphertexts ``(N, k, C, k, H, W)``; returns ``(N, k, n_classes, k)``."""
    for name, mod in layers:
        if isinstance(mod, nn.Conv2d):
            x = more.conv2d(x, params[f"{name}.weight"], params.get(f"{name}.bias"), padding=mod.padding[0])
        elif isinstance(mod, Poly):
            x = mod.a * x + mod.b * more.square(x)
        elif isinstance(mod, nn.AvgPool2d):
            size = mod.kernel_size if isinstance(mod.kernel_size, int) else mod.kernel_size[0]
            x = more.avg_pool2d(x, size)
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            x = more.adaptive_avg_pool2d(x, mod.output_size)
        elif isinstance(mod, nn.Flatten):  # (N, k, C, k, H, W) -> (N, k, C·H·W, k), torch's flattening order
            n, k, c, _, h, w = x.shape
            x = x.permute(0, 1, 2, 4, 5, 3).reshape(n, k, c * h * w, k)
        elif isinstance(mod, nn.Linear):
            x = more.linear(x, params[f"{name}.weight"], params.get(f"{name}.bias"))
    return x


def encode_params(state: dict[str, torch.Tensor], k: int = 2) -> Params:
    """Public initial weights as ciphertexts ``w·I`` (entry-last), leaves that require grad."""
    return {name: more.encode(v.detach().to(torch.float32), k).requires_grad_(True) for name, v in state.items()}


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def ring_sgd_epoch(
    layers: list[tuple[str, nn.Module]],
    params: Params,
    velocity: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    batch_size: int,
    rng: np.random.Generator,
) -> None:
    """One epoch of SGD on ciphertexts (``images``: ``(N, C, H, W, k, k)``, ``labels``: ``(N, K, k, k)``), in place.

    Loss: ``Σ (out − y)² / batch`` (a ring element); the update ``v ← μv + g``,
    ``w ← w − lr·v`` is ring-linear. With ``k = 1`` this is plaintext SGD.
    """
    k = images.shape[-1]
    eye = torch.eye(k, dtype=images.dtype)
    names = list(params)
    for idx in batches(len(images), batch_size, rng):
        idx_t = torch.from_numpy(idx)
        out = forward(layers, params, more.to_blocks(images[idx_t]))
        diff = out - more.to_blocks(labels[idx_t])
        loss = more.trace_sum(more.square(diff)) / len(idx)
        grads = torch.autograd.grad(loss, [params[n] for n in names], grad_outputs=eye)
        with torch.no_grad():
            for name, g in zip(names, grads):
                velocity[name].mul_(momentum).add_(more.transpose(g))
                params[name].sub_(lr * velocity[name])


def plain_sgd_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    onehot: torch.Tensor,
    *,
    batch_size: int,
    rng: np.random.Generator,
) -> None:
    """The plaintext twin: the same network and loss with torch's SGD (momentum), on the real data."""
    for idx in batches(len(images), batch_size, rng):
        idx_t = torch.from_numpy(idx)
        opt.zero_grad()
        loss = ((model(images[idx_t]) - onehot[idx_t]) ** 2).sum() / len(idx)
        loss.backward()
        opt.step()


def plain_optimizer(model: nn.Module, *, lr: float, momentum: float) -> torch.optim.Optimizer:
    # dampening 0 and no Nesterov: torch's update v ← μv + g, w ← w − lr·v, the ring update above
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def onehot(labels: np.ndarray | torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), n_classes).to(torch.float32)
