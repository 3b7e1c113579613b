"""Gradient inversion: rebuild a site's training images from the update it sends.

Papers: Zhu, Liu, Han 2019, "Deep Leakage from Gradients" (DLG: L-BFGS on the
L2 distance between the observed gradient and a dummy input's gradient);
Zhao, Mopuri, Bilen 2020, "iDLG" (the label of a single image is the entry of
the last layer's bias gradient with negative sign); Geiping, Bauermeister,
Dröge, Moeller 2020, "Inverting Gradients" (IG: cosine distance plus total
variation, Adam on the sign of the input gradient, step decay).

Threat model: an honest-but-curious coordinator. It receives from one site
the weights after local training on a batch it does not see, knows the
weights it sent, the architecture, the learning rate and the batch size
(the protocol's public config); it reads the update as a gradient,
``(sent - received) / lr`` (exact for one SGD step). The harness, not the
attacker, holds the images and scores the reconstruction (PSNR, SSIM).

Faithful: the DLG and IG losses, optimisers and the iDLG label rule; IG's
recipe is breaching's ``invertinggradients`` attack (cosine similarity,
signed Adam at step 0.1, boxed to [0, 1], step decay, TV on the mean
|dx| + |dy|, best restart by gradient match). Differs: far fewer iterations
than the papers (the audit: 100-300; breaching: 24 000), so that an audit
runs on a CPU in seconds; labels of a batch are estimated from the bias
gradient (``infer_labels``), not optimised.

privmed's addition, the ``ig-smooth`` preset (not in Geiping et al.): IG's
loss (cosine + TV, TV 1e-3) minimised by L-BFGS through smooth surrogates of
the victim network (``smooth_surrogate``: ReLU -> tau * softplus(x / tau),
max-pool -> a softmax-weighted window mean), temperature annealed
0.3 -> 0.01 and then the network itself, one L-BFGS stage each, each
stage's result boxed to [0, 1] (optionally projected onto the data's public
per-image normalisation, ``impose_normalisation``). Why: the parameter
gradient of a ReLU/max-pool network jumps wherever a ReLU or a pool's argmax
switches, so the matching loss is a staircase (along a line in input space
its largest step is ~100x its median step; the surrogate's ~3.6x) whose input
gradient does not see the jumps; signed Adam wanders on it. The attacker
uses only what it has: the weights it sent, the architecture, the reply and
the data's value range; the surrogate is its own computation, the observed
gradient stays the real network's. Hand-written: breaching has no
surrogate continuation, and privmed does not depend on breaching.

Measured (``benchmarks/inversion_strength.py``; phantom v2 32x32, the
default SmallCNN at initialisation, one image's plain-SGD gradient, probe
images 0-4, mean ± 95 % CI; flat-guess null 10.4 ± 0.1 dB, random image
7.1 dB): ``ig`` (signed Adam, 1,000 iterations, TV 0.2) 12.5 ± 1.4 dB,
SSIM 0.36; its best affine intensity fit only 12.7 dB, so the failure was
not an intensity ambiguity, and no pixel is invisible to the gradient (every
pixel's sensitivity is >= 0.18x the median); its cosine distance (~0.007-0.01)
is worse than the true image with 10 % noise scores (~0.006), so it is the
optimisation. ``ig-smooth``: 28.1 ± 2.3 dB, SSIM 0.94 ± 0.03, every image
26.0-29.9 dB (3 restarts, ~1 CPU-minute per restart); one restart 26.5 ± 3.6
dB (23.1-29.9). Imposing the phantom's normalisation (one restart) gave
26.1 ± 2.7 dB: no gain, the contrast was never the problem. On one Adam step
or five, read as a gradient, ``ig-smooth`` scores 6.3-6.5 dB, below the flat
guess.

DLG on the sigmoid LeNet of its paper (:class:`LeNetZhu`), the audit's positive control, reaches 28-52 dB with
300 L-BFGS iterations and up to 4 restarts on 4 of 5 phantom seeds' probe
images (19 dB on the fifth; the flat guess is 10-12 dB). What a privmed site
sends after one Adam step is ``lr * sign(g)`` (Adam's first step normalises
every coordinate), which removes the magnitudes the attacks match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privmed.errors import PrivmedError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
    from flwr.clientapp.typing import Mod

    from privmed.data.base import ArraySet
    from privmed.privacy.base import Trainer
    from privmed.site import ModelSpec

METHODS = ("dlg", "ig")


@dataclass(frozen=True)
class InversionConfig:
    """One attacker; the literature attacks are the presets in :data:`PRESETS`."""

    method: str = "ig"
    iterations: int = 300
    lr: float = 0.1  # IG's Adam step on the image (DLG: L-BFGS step size 1)
    tv_weight: float = 1e-2
    restarts: int = 1  # random initialisations; the attacker keeps the best gradient match
    seed: int = 0
    # stop restarting once a restart's gradient match is below this (the attacker's own criterion; 0: never)
    good_match: float = 0.0
    # IG only: temperatures of the smooth-surrogate continuation, softest first (() = Geiping's signed Adam instead);
    # each is one L-BFGS stage of ``iterations`` steps, and a last stage attacks the network itself
    smooth: tuple[float, ...] = ()
    # the data's public per-image intensity normalisation, imposed on every stage's result: two (percentile, value)
    # anchors, then clipped to [0, 1] (phantom v2: privmed.data.phantom_v2.NORMALISATION); None: the [0, 1] box only
    normalisation: tuple[tuple[float, float], tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PrivmedError(f"unknown inversion method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.iterations < 1 or not self.lr > 0 or self.tv_weight < 0 or self.restarts < 1 or self.good_match < 0:
            raise PrivmedError(
                "inversion needs iterations >= 1, lr > 0, tv_weight >= 0, restarts >= 1 and good_match >= 0"
            )
        if self.smooth and (self.method != "ig" or not all(t > 0 for t in self.smooth)):
            raise PrivmedError("smooth-surrogate temperatures need method 'ig' and must all be > 0")
        if self.normalisation is not None:
            (q_lo, v_lo), (q_hi, v_hi) = self.normalisation
            if not (0 <= q_lo < q_hi <= 100 and 0 <= v_lo < v_hi <= 1):
                raise PrivmedError(
                    "normalisation needs two (percentile, value) anchors, 0 <= q1 < q2 <= 100 and 0 <= v1 < v2 <= 1;"
                    f" got {self.normalisation}"
                )


PRESETS = {
    # a normalised L2 match under 1e-5 is a converged DLG reconstruction (28-52 dB on the phantom): stop restarting
    "dlg": InversionConfig(method="dlg", iterations=300, lr=1.0, tv_weight=0.0, restarts=4, good_match=1e-5),
    "ig": InversionConfig(method="ig", iterations=300, lr=0.1, tv_weight=1e-2),
    # IG through a smooth surrogate of the network (ReLU -> softplus, max-pool -> softmax-pool), temperature annealed
    # to the network itself, L-BFGS per stage, 3 restarts kept by gradient match: 26-30 dB on one image's plain-SGD
    # gradient of the default CNN, where "ig" stalls at 12-14 dB (benchmarks/inversion_strength.py); ~1 CPU-minute
    # per restart and image, too slow for the audit.
    # Set ``normalisation`` to the data's public per-image normalisation where there is one.
    "ig-smooth": InversionConfig(
        method="ig", iterations=300, lr=1.0, tv_weight=1e-3, restarts=3, smooth=(0.3, 0.1, 0.05, 0.03, 0.01)
    ),
}


class LeNetZhu(nn.Module):
    """The victim network of the DLG paper: three 5x5 convolutions with sigmoids, one linear layer.

    Twice differentiable everywhere (ReLU is not), which DLG's L-BFGS relies on.
    Weights are drawn uniformly in [-0.5, 0.5] as in the paper's code. ``spatial_dims=3``: the same
    network with 3-D convolutions, for volumes (the paper's is 2-D).
    """

    def __init__(
        self, in_channels: int, n_classes: int, image_size: int, *, seed: int = 0, spatial_dims: int = 2
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.body = nn.Sequential(
            conv(in_channels, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            conv(12, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            conv(12, 12, 5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        self.fc = nn.Linear(12 * ((image_size + 3) // 4) ** spatial_dims, n_classes)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.rand(p.shape, generator=gen) - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


def model_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool = False
) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy w.r.t. every parameter (what FedSGD would send)."""
    loss = F.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph))


def update_to_gradient(
    model: nn.Module, sent: dict[str, torch.Tensor], received: dict[str, torch.Tensor], lr: float
) -> list[torch.Tensor]:
    """The coordinator's reading of an update as a gradient: ``(sent - received) / lr`` per parameter."""
    return [(sent[name].float() - received[name].float()) / lr for name, _ in model.named_parameters()]


def infer_labels(gradient: list[torch.Tensor], *, n_classes: int, batch_size: int) -> torch.Tensor:
    """Labels from the last layer's bias gradient (iDLG for one image; counts for a batch).

    For mean cross-entropy the bias gradient is ``mean_i(p_i - onehot(y_i))``: for
    one image the true class is the only negative entry (Zhao et al. 2020). For a
    batch, class counts are estimated as ``B * (1/K - g_c)`` (uniform predictions
    assumed), rounded to sum to ``B``.
    """
    bias = next((g for g in reversed(gradient) if g.ndim == 1 and g.numel() == n_classes), None)
    if bias is None:
        raise PrivmedError("cannot infer labels: the model has no output bias of size n_classes")
    if batch_size == 1:
        return bias.argmin().reshape(1)
    est = np.clip(batch_size * (1.0 / n_classes - bias.detach().numpy().astype(np.float64)), 0, None)
    counts = np.floor(est).astype(int)
    for c in np.argsort(-(est - counts))[: batch_size - counts.sum()]:
        counts[c] += 1
    while counts.sum() > batch_size:
        counts[counts.argmax()] -= 1
    return torch.from_numpy(np.repeat(np.arange(n_classes), counts)).long()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbours along each spatial axis, summed (2-D: |dy| + |dx|; volumes: + |dz|)."""
    return sum(x.diff(dim=axis).abs().mean() for axis in range(2, x.dim()))


def _cosine_distance(g: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    dot = sum((a * b).sum() for a, b in zip(g, target))
    norm = torch.sqrt(sum((a * a).sum() for a in g)) * torch.sqrt(sum((b * b).sum() for b in target))
    return 1 - dot / norm.clamp_min(1e-12)


def reconstruct(
    model: nn.Module,
    gradient: list[torch.Tensor],
    *,
    shape: tuple[int, ...],
    labels: torch.Tensor,
    config: InversionConfig,
    mask: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Images [B, *shape] in [0, 1] whose gradient matches ``gradient`` (the attacker's whole work).

    Several restarts (DLG's L-BFGS diverges from some starts); the attacker
    keeps the one whose gradient matches best, a criterion it can compute.
    ``mask``: boolean masks per parameter of the coordinates the attacker
    saw (a DSSGD upload shares only a fraction θu); the losses compare those only.
    """
    model.eval()
    target = [g.detach() for g in gradient] if mask is None else [g.detach()[m] for g, m in zip(gradient, mask)]
    gen = torch.Generator().manual_seed(config.seed)
    best, best_loss = None, float("inf")
    for _ in range(config.restarts):
        dummy = torch.rand((len(labels), *shape), generator=gen).requires_grad_(True)
        attack = _dlg if config.method == "dlg" else _ig_smooth if config.smooth else _ig
        x = attack(model, target, dummy, labels, config, mask)
        loss = float(_match_loss(model, x, labels, target, config, mask))
        loss = loss if np.isfinite(loss) else float("inf")
        if best is None or loss < best_loss:
            best, best_loss = x, loss
        if best_loss < config.good_match:
            break
    return best


def _match_loss(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    target: list[torch.Tensor],
    config: InversionConfig,
    mask: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    g = model_gradient(model, x, labels, create_graph=x.requires_grad)
    if mask is not None:
        g = [a[m] for a, m in zip(g, mask)]
    if (
        config.method == "dlg"
    ):  # DLG's squared L2 distance, divided by the constant ||target||^2 so L-BFGS's tolerances are scale-free
        return sum(((a - b) ** 2).sum() for a, b in zip(g, target)) / sum((b * b).sum() for b in target).clamp_min(
            1e-30
        )
    return _cosine_distance(g, target) + config.tv_weight * total_variation(x)


def _dlg(
    model: nn.Module,
    target: list[torch.Tensor],
    dummy: torch.Tensor,
    labels: torch.Tensor,
    config: InversionConfig,
    mask: list[torch.Tensor] | None,
) -> torch.Tensor:
    opt = torch.optim.LBFGS(
        [dummy], lr=config.lr, max_iter=config.iterations, history_size=100, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _match_loss(model, dummy, labels, target, config, mask)
        loss.backward()
        return loss

    opt.step(closure)
    return torch.nan_to_num(dummy.detach(), nan=0.5).clamp(0, 1)


def _ig(
    model: nn.Module,
    target: list[torch.Tensor],
    dummy: torch.Tensor,
    labels: torch.Tensor,
    config: InversionConfig,
    mask: list[torch.Tensor] | None,
) -> torch.Tensor:
    opt = torch.optim.Adam([dummy], lr=config.lr)
    n = config.iterations
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(n * 0.375), int(n * 0.625), int(n * 0.875)], gamma=0.1
    )
    for _ in range(n):
        opt.zero_grad()
        loss = _match_loss(model, dummy, labels, target, config, mask)
        loss.backward()
        dummy.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            dummy.clamp_(0, 1)
    return dummy.detach()


class _SoftMaxPool(nn.Module):
    """Max pooling (kernel = stride = ``k``) as a softmax-weighted window mean at temperature ``tau`` (-> max)."""

    def __init__(self, k: int, tau: float) -> None:
        super().__init__()
        self.k, self.tau = k, tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *size = x.shape
        k, dims = self.k, len(size)
        out = [s // k for s in size]
        x = x[(..., *(slice(0, s * k) for s in out))]  # max pooling drops a remainder too
        x = x.reshape(n, c, *(v for s in out for v in (s, k)))
        x = x.permute(0, 1, *range(2, 2 + 2 * dims, 2), *range(3, 3 + 2 * dims, 2)).reshape(n, c, *out, k**dims)
        return (torch.softmax(x / self.tau, -1) * x).sum(-1)


class _SoftReLU(nn.Module):
    """``tau * softplus(x / tau)``: ReLU as tau -> 0."""

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tau * F.softplus(x / self.tau)


def smooth_surrogate(model: nn.Module, tau: float) -> nn.Module:
    """A copy of ``model`` (same weights) whose ReLUs and max-pools are smooth at temperature ``tau``.

    Only ``nn.ReLU`` modules and ``nn.MaxPool2d``/``nn.MaxPool3d`` with kernel = stride and no padding or
    dilation are replaced (privmed's SmallCNN and seg-cnn); anything else is left as it is.
    """
    import copy

    out = copy.deepcopy(model)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _SoftReLU(tau))
            elif (
                isinstance(child, (nn.MaxPool2d, nn.MaxPool3d))
                and isinstance(child.kernel_size, int)
                and child.stride == child.kernel_size
                and child.padding == 0
                and child.dilation == 1
            ):
                setattr(parent, name, _SoftMaxPool(child.kernel_size, tau))
    return out


def impose_normalisation(x: torch.Tensor, anchors: tuple[tuple[float, float], tuple[float, float]]) -> torch.Tensor:
    """Map each image's two anchor percentiles to their values, clip to [0, 1] (the data's own preprocessing)."""
    (q_lo, v_lo), (q_hi, v_hi) = anchors
    q = torch.quantile(x.flatten(1), torch.tensor([q_lo / 100, q_hi / 100], dtype=x.dtype), dim=1)
    lo, hi = (v.reshape(-1, *(1,) * (x.dim() - 1)) for v in q)
    return (v_lo + (v_hi - v_lo) * (x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def _ig_smooth(
    model: nn.Module,
    target: list[torch.Tensor],
    dummy: torch.Tensor,
    labels: torch.Tensor,
    config: InversionConfig,
    mask: list[torch.Tensor] | None,
) -> torch.Tensor:
    """IG's loss, minimised by L-BFGS through smooth surrogates of decreasing temperature, then the network itself.

    The parameter gradient of a ReLU/max-pool network jumps wherever a ReLU or a pool's argmax switches, so the
    matching loss is a staircase whose input gradient does not see the jumps; the surrogates smooth it
    (a continuation, as in graduated non-convexity). The observed ``target`` stays the real network's gradient.
    """
    x = dummy.detach()
    for tau in (*config.smooth, 0.0):
        surrogate = smooth_surrogate(model, tau) if tau > 0 else model
        x = x.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [x], lr=config.lr, max_iter=config.iterations, history_size=50, line_search_fn="strong_wolfe"
        )

        def closure(m: nn.Module = surrogate, x: torch.Tensor = x, opt: torch.optim.Optimizer = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = _match_loss(m, x, labels, target, config, mask)
            loss.backward()
            return loss

        opt.step(closure)
        x = torch.nan_to_num(x.detach(), nan=0.5).clamp(0, 1)
        if config.normalisation is not None:
            x = impose_normalisation(x, config.normalisation)
    return x


def match_to_truth(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Reorder reconstructions to their closest originals (the evaluator's job; Hungarian on MSE)."""
    from scipy.optimize import linear_sum_assignment

    cost = ((recon[:, None] - truth[None]) ** 2).flatten(2).mean(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    out = torch.empty_like(recon)
    out[cols] = recon[rows]
    return out


def observe_site_update(
    site_batch: ArraySet,
    spec: ModelSpec,
    weights: ArrayRecord,
    *,
    mods: Sequence[Mod] = (),
    trainer: Trainer | None = None,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[dict, dict]:
    """What the coordinator receives when a site trains one local step on ``site_batch``.

    The site is the real privmed ClientApp (with the run's privacy mods and
    trainer) holding only the victim batch, reached through the in-process
    Grid, so every transformation a mechanism applies to the reply applies
    here. Returns the (sent, received) state dicts.
    """
    from flwr.app import Message, RecordDict

    from privmed.data.base import SiteData
    from privmed.engine.session import FIRST_NODE_ID, one_site_grid
    from privmed.protocols.base import TrainInstruction

    site = SiteData("victim", site_batch, site_batch.subset([]), site_batch.subset([]))
    grid = one_site_grid(site, spec, mods=mods, trainer=trainer)
    config = TrainInstruction(local_epochs=1, lr=lr, batch_size=len(site_batch), seed=seed, server_round=1).to_record()
    msg = Message(RecordDict({"arrays": weights, "config": config}), FIRST_NODE_ID, "train", group_id="audit")
    reply = list(grid.send_and_receive([msg]))[0]
    if reply.has_error():
        raise PrivmedError(f"the victim site could not train for the inversion probe: {reply.error.reason}")
    return weights.to_torch_state_dict(), reply.content["arrays"].to_torch_state_dict()


def score_reconstruction(recon: torch.Tensor, truth: torch.Tensor, *, match: bool = True) -> dict[str, float]:
    """PSNR and SSIM of matched reconstructions, beside two null baselines that know nothing of the update.

    ``*_flat_guess``: every pixel at the batch's mean intensity (an attacker
    that knows only the data's mean brightness); ``*_random_image``: uniform
    noise in [0, 1] (an attacker that knows only the range). A reconstruction
    leaks the image only where it beats both. ``match=False``: ``recon[i]``
    is already the attacker's guess of ``truth[i]`` (activation inversion).
    """
    from privmed.attacks.metrics import psnr, ssim

    matched = match_to_truth(recon, truth) if match else recon
    flat = torch.full_like(truth, float(truth.mean()))
    noise = torch.rand(truth.shape, generator=torch.Generator().manual_seed(0))
    return {
        "psnr": psnr(matched, truth),
        "ssim": ssim(matched, truth),
        "psnr_flat_guess": psnr(flat, truth),
        "ssim_flat_guess": ssim(flat, truth),
        "psnr_random_image": psnr(noise, truth),
        "ssim_random_image": ssim(noise, truth),
    }
