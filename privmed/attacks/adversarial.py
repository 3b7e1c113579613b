"""Adversarial examples against the final model: FGSM and PGD, robust accuracy per ε.

Papers: Goodfellow, Shlens, Szegedy 2015, "Explaining and Harnessing
Adversarial Examples" (FGSM: one step of size ε along the sign of the input
gradient); Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "Towards Deep
Learning Models Resistant to Adversarial Attacks" (PGD: random start in the
L∞ ball, steps of α = 2.5 ε / steps, projection back onto the ball and onto
the image range [0, 1]).

Threat model: white box (the attacker has the released weights), untargeted,
L∞ perturbations of size ε on images in [0, 1]. The harness reports accuracy
on the perturbed test images (robust accuracy). Faithful to both papers;
written by hand (a dozen lines) rather than adding a dependency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from privmed.data.base import ArraySet


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, x)[0]


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    return (x + eps * _input_grad(model, x, y).sign()).clamp(0, 1).detach()


def pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 10, seed: int = 0
) -> torch.Tensor:
    if eps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps
    gen = torch.Generator().manual_seed(seed)
    adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv = adv + alpha * _input_grad(model, adv, y).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def robust_accuracy(
    model: nn.Module, data: ArraySet, *, eps: tuple[float, ...], attack: str = "pgd", steps: int = 10, seed: int = 0
) -> dict[str, float]:
    """Accuracy on ``data`` perturbed by ``attack`` ("fgsm" | "pgd") at each ε; keys ``"eps=<ε>"``."""
    model.eval()
    x, y = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    out = {}
    for e in eps:
        adv = fgsm(model, x, y, eps=e) if attack == "fgsm" else pgd(model, x, y, eps=e, steps=steps, seed=seed)
        out[f"eps={e:g}"] = _accuracy(model, adv, y)
    return out
