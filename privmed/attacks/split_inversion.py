"""What split learning's cut layer leaks: images from activations, labels from returned gradients.

Attacks on the party that receives the cut-layer activations (the
coordinator, or an eavesdropper without TLS), as the split protocol's
threat view declares (:mod:`privmed.protocols.split`):

- **Decoder** (learning-based model inversion; He, Zhang & Lee 2019, "Model
  inversion attacks against collaborative inference", ACSAC, their
  query-free/black-box inverse network; UnSplit, Erdoğan et al. 2022): the
  attacker passes auxiliary images from the same distribution (held-out
  patients, none of the victim's) through the client layer(s) and trains a
  decoder from activations back to images, then decodes the victim's
  activations. Faithful: the inverse network trained on (activation, image)
  pairs of auxiliary data with a pixel MSE. Differs: the client weights are
  the ones the coordinator relays (it needs no queries to the site); a small
  upsampling conv decoder instead of their deconvolution stacks.
- **White-box optimisation** (He et al. 2019's regularised maximum
  likelihood, rMLE): knowing the client layers, find the image x in [0, 1]
  whose activations match the observed ones, ‖f(x) − a‖² + λ·TV(x), by Adam
  from a flat grey image. Faithful: the objective and the TV prior; UnSplit's
  variant (which also learns the client weights) is not needed here because
  the coordinator holds them.
- **Distance correlation** between the inputs and their activations
  (Székely et al. 2007, the ``dcor`` package; NoPeek minimises it):
  1 means the activations determine the input up to a similarity, near the
  independent-pairing null means they say little. At few images the plain
  estimate is biased upwards (its shuffled-pairs null is far above 0): the
  bias-corrected square (Székely & Rizzo 2014) is reported beside it.
- **Norm-based label leakage** (Li et al. 2022, "Label leakage and protection
  in two-party split learning", ICLR): in the U-shaped split the site holds
  the head and the labels and sends the server the gradient of the loss
  with respect to the server's output; the server scores each example by
  that gradient's norm (examples of the rarer, positive class have larger
  gradients). Reported as the AUROC of the norm for "label ≠ 0"; 0.5 is
  chance.

Each score comes with its nulls (flat guess, random image; chance 0.5) and a
positive control the harness builds (:func:`privmed.attacks.harness.measure_activation_inversion`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from privmed.attacks.gradient_inversion import total_variation

Encoder = Callable[[torch.Tensor], torch.Tensor]


def _decoder(act_shape: tuple[int, ...], img_shape: tuple[int, ...]) -> nn.Module:
    """Upsample the activations to the image size, then three convolutions to the image's channels in [0, 1]."""
    c = act_shape[0]
    return nn.Sequential(
        nn.Upsample(size=tuple(img_shape[1:]), mode="bilinear", align_corners=False),
        nn.Conv2d(c, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, img_shape[0], 3, padding=1),
        nn.Sigmoid(),
    )


def decoder_inversion(
    encode: Encoder,
    aux: torch.Tensor,
    victim_acts: torch.Tensor,
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> torch.Tensor:
    """Train a decoder on ``(encode(aux), aux)``, return its decoding of ``victim_acts`` ([N, C, H, W] in [0, 1])."""
    with torch.no_grad():
        aux_acts = encode(aux)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dec = _decoder(tuple(aux_acts.shape[1:]), tuple(aux.shape[1:]))
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(aux), (min(batch_size, len(aux)),), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = ((dec(aux_acts[idx]) - aux[idx]) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return dec(victim_acts)


def whitebox_inversion(
    encode: Encoder,
    victim_acts: torch.Tensor,
    shape: tuple[int, ...],
    *,
    iterations: int = 300,
    lr: float = 0.05,
    tv_weight: float = 1e-3,
) -> torch.Tensor:
    """He et al.'s rMLE: the images in [0, 1] whose activations under the known client layers match ``victim_acts``."""
    x = torch.full((len(victim_acts), *shape), 0.5, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    scale = victim_acts.pow(2).mean().clamp_min(1e-12)
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        loss = (encode(x) - victim_acts).pow(2).mean() / scale + tv_weight * total_variation(x)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()


def input_distance_correlation(x: torch.Tensor, acts: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """dCor(inputs, activations) with the ``dcor`` package, beside its independent-pairing null and dCor(x, x)."""
    import dcor

    xs = x.flatten(1).double().numpy()
    a = acts.flatten(1).double().numpy()
    perm = np.random.default_rng(seed).permutation(len(a))
    return {
        "dcor": float(dcor.distance_correlation(xs, a)),
        "dcor_null_shuffled_pairs": float(dcor.distance_correlation(xs, a[perm])),
        # the plain estimate is biased upwards at small n; the bias-corrected square is ~0 under independence
        "dcor_sqr_bias_corrected": float(dcor.u_distance_correlation_sqr(xs, a)),
        "dcor_sqr_bias_corrected_null_shuffled_pairs": float(dcor.u_distance_correlation_sqr(xs, a[perm])),
        "dcor_positive_control_input_itself": float(dcor.distance_correlation(xs, xs)),
        "images": len(xs),
    }


def norm_label_attack(grads: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Li et al.'s norm attack: AUROC of each example's returned-gradient norm as a score for ``label != 0``."""
    from sklearn.metrics import roc_auc_score

    norms = grads.flatten(1).norm(dim=1).double().numpy()
    positive = np.asarray(labels) != 0
    if positive.all() or not positive.any():
        return {"auc": float("nan"), "examples": len(norms), "note": "one class only: no AUROC"}
    return {
        "auc": float(roc_auc_score(positive, norms)),
        "mean_norm_label_0": float(norms[~positive].mean()),
        "mean_norm_label_not_0": float(norms[positive].mean()),
        "examples": len(norms),
    }


def per_example_gradients(head: nn.Module, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d loss_i / d output_i for each example (what a U-shaped site returns, up to the 1/batch factor)."""
    h = outputs.detach().requires_grad_(True)
    nn.functional.cross_entropy(head(h), labels, reduction="sum").backward()
    return h.grad.detach()
