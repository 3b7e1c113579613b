"""Model inversion: a class representative rebuilt from the final classifier alone.

Paper: Fredrikson, Jha, Ristenpart 2015, "Model Inversion Attacks that
Exploit Confidence Information and Basic Countermeasures" (gradient descent
on the input to maximise the target class's confidence, with a denoising
prior). Threat model: white box, the released weights only. Faithful: the
cost ``1 - p_class(x)`` minimised by gradient descent from a blank image;
differs: a total-variation prior in place of the paper's denoiser, and Adam.

The harness compares the result with the class mean image of the training
data (Pearson correlation, and SSIM), and with the other classes' means:
an inversion that leaks the class's look is closer to its own mean
(``own_minus_other``). Because the classes share their anatomy (class means
correlate at ≈ 0.98-0.998), the sharper measure is ``corr_class_difference``:
the correlation of the difference between two classes' inversions with the
difference between their mean images (the anatomy cancels). Null baseline: the same attack on an **untrained**
model of the same architecture (:func:`inversion_with_null`), which knows
nothing of the data, so any gap it shows is what the prior and the class
means' own similarity give for free; the leakage is the trained model's gap
beyond the null's. On phantom v1 the two class means correlate at ≈ 0.98, so
both gaps are small there; phantom v2's class-dependent lesion location
priors make a class's look learnable, hence invertible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from privmed.attacks.gradient_inversion import total_variation
from privmed.attacks.metrics import correlation, ssim
from privmed.data.base import ArraySet


@dataclass(frozen=True)
class InversionPrior:
    iterations: int = 200
    lr: float = 0.05
    tv_weight: float = 0.05


def invert_class(
    model: nn.Module, target: int, *, shape: tuple[int, ...], prior: InversionPrior = InversionPrior()
) -> torch.Tensor:
    """An input [1, *shape] in [0, 1] the model assigns to class ``target`` with high confidence."""
    model.eval()
    x = torch.full((1, *shape), 0.5, requires_grad=True)
    opt = torch.optim.Adam([x], lr=prior.lr)
    for _ in range(prior.iterations):
        opt.zero_grad()
        p = torch.softmax(model(x), 1)[0, target]
        loss = (1 - p) + prior.tv_weight * total_variation(x)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()


def class_means(data: ArraySet, n_classes: int) -> np.ndarray:
    """The harness's ground truth: mean training image per class [K, C, H, W] (NaN for absent classes)."""
    return np.stack(
        [
            data.images[data.labels == c].mean(0)
            if (data.labels == c).any()
            else np.full(data.images.shape[1:], np.nan)
            for c in range(n_classes)
        ]
    )


def inversion_similarity(
    model: nn.Module, train: ArraySet, n_classes: int, *, prior: InversionPrior = InversionPrior()
) -> dict[str, float]:
    """Per class: correlation and SSIM of the inversion with its own class mean, correlation with the others'."""
    means = class_means(train, n_classes)
    out: dict[str, float] = {}
    own, other = [], []
    inv: dict[int, np.ndarray] = {}
    for c in range(n_classes):
        if np.isnan(means[c]).any():
            continue
        x = invert_class(model, c, shape=tuple(train.images.shape[1:]), prior=prior)[0].numpy()
        inv[c] = x
        own.append(correlation(x, means[c]))
        other += [correlation(x, means[k]) for k in range(n_classes) if k != c and not np.isnan(means[k]).any()]
        out[f"ssim_class{c}"] = ssim(torch.from_numpy(x)[None], torch.from_numpy(means[c])[None])
    out["corr_own_class_mean"] = float(np.mean(own))
    out["corr_other_class_mean"] = float(np.mean(other)) if other else float("nan")
    out["own_minus_other"] = out["corr_own_class_mean"] - out["corr_other_class_mean"]
    # what tells the classes apart, with the anatomy they share removed: inversions' difference vs class means'
    pairs = [(a, b) for a in inv for b in inv if a < b]
    out["corr_class_difference"] = (
        float(np.mean([correlation(inv[b] - inv[a], means[b] - means[a]) for a, b in pairs])) if pairs else float("nan")
    )
    return out


def class_mean_similarity(train: ArraySet, n_classes: int) -> float:
    """Mean correlation between different classes' mean images (near 1: the classes look alike on average)."""
    means = class_means(train, n_classes)
    ok = [c for c in range(n_classes) if not np.isnan(means[c]).any()]
    pairs = [correlation(means[a], means[b]) for a in ok for b in ok if a < b]
    return float(np.mean(pairs)) if pairs else float("nan")


def inversion_with_null(
    model: nn.Module,
    untrained: nn.Module,
    train: ArraySet,
    n_classes: int,
    *,
    prior: InversionPrior = InversionPrior(),
) -> dict:
    """The attack on the released model beside the same attack on an untrained model (the null)."""
    attacked = inversion_similarity(model, train, n_classes, prior=prior)
    null = inversion_similarity(untrained, train, n_classes, prior=prior)
    return {
        **attacked,
        "null_untrained_model": null,
        "gap_beyond_null": attacked["own_minus_other"] - null["own_minus_other"],
        "class_difference_beyond_null": attacked["corr_class_difference"] - null["corr_class_difference"],
        "class_means_correlation": class_mean_similarity(train, n_classes),
    }
