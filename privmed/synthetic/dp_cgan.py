"""DP-CGAN: a label-conditioned GAN whose discriminator is trained with DP-SGD (Opacus).

Paper: Torkzadehmahani, Kairouz and Paten 2019, "DP-CGAN: Differentially
Private Synthetic Data and Label Generation" (CVPR workshops). Only the
discriminator sees real images, so only its updates are made private; the
generator learns from the discriminator alone and is private by
post-processing. The released artefact is a labelled synthetic data set
(:func:`write_medmnist`), which anyone may then train on.

Faithful: conditional generator and discriminator (the label enters both);
per-example clipping of the discriminator's gradients and Gaussian noise
σC on their sum; the generator trained without noise; RDP accounting with
training stopped at the target ε (the paper's setting: C = 1.1, σ = 1.12,
δ = 1e-5, ε = 9.6; batch 600 on MNIST's 60 000 images, here the expected
batch is ``batch_size`` of the site's images). Evaluation as the paper's:
train a classifier on synthetic labelled images, test on real ones
(:mod:`privmed.synthetic.evaluate`).

Differs, on purpose:

- Poisson sampling (each image in each step with probability q), which the
  RDP accountant's amplification assumes; the paper's code takes shuffled
  fixed-size batches, for which that accounting is not valid.
- The accountant is told the noise multiplier σ; the paper's code passes
  σ·C (= 1.232) as the noise multiplier, which overstates the noise and
  understates ε whenever C > 1. Opacus' ``PrivacyEngine(accountant="rdp")``
  is chosen explicitly (its default is PRV).
- One forward and one private step per batch, on real and fake images
  together (the real batch plus a fixed number of fakes, the expected real
  batch size, so the number of fakes does not depend on which real images
  were sampled and one real image changes the clipped sum by at most C).
  The paper clips the real and the fake loss gradients separately and sums
  them; Opacus' DCGAN example stepped the discriminator twice per batch and
  charged the budget twice (opacus issue #418).
- The generator's step runs with the discriminator's Opacus hooks off and
  its parameters frozen, so it leaves no per-sample gradients behind in the
  discriminator (stale ``grad_sample``: opacus issue #548).
- GroupNorm instead of BatchNorm (BatchNorm mixes the examples of a batch,
  so per-example gradients do not exist); small convolutional networks for
  16–32 px images instead of the paper's MLPs on MNIST; Adam for both nets.
- Fake labels are drawn uniformly over the classes (the real class
  frequencies would be a further, unaccounted release).
- Noise and Poisson sampling draw from a generator seeded from the site's
  secret entropy (:mod:`privmed.privacy.randomness`), never the run seed.

Why partly by hand: Opacus privatises the discriminator (sampling, per-sample
gradients, clipping, noise, accounting); the conditional GAN around it and
the alternating steps are a few lines that no library packages for a
GroupNorm CGAN with Opacus.

Privacy unit and the ledger: ε (the stop criterion) is at image level. A
patient with k images is k records; the ledger is charged, per patient,
with the sampled-Gaussian RDP for k = 1 and with the unamplified group
bound (``accounting.rdp_group_gaussian``, sensitivity kC) for k > 1, as
sample-level DP-SGD does (:mod:`privmed.privacy.dp`). The patient-level ε
that bound gives is reported beside the image-level ε, and it is much
larger. MedMNIST has one image per "patient", where the two coincide.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from privmed.data.base import ArraySet
from privmed.errors import PrivmedError
from privmed.privacy.accounting import epsilon_from_rdp, history_epsilon, sample_level_patient_rdp
from privmed.privacy.randomness import guarantee, torch_noise_generator

PAPER = {"max_grad_norm": 1.1, "noise_multiplier": 1.12, "batch_size": 600, "epsilon": 9.6, "delta": 1e-5}


@dataclass(frozen=True)
class CGANConfig:
    """Training settings; ``epsilon`` None trains the non-private CGAN for ``steps`` steps."""

    epsilon: float | None = 9.6
    delta: float = 1e-5
    noise_multiplier: float = 1.12
    max_grad_norm: float = 1.1
    batch_size: int = 64  # expected real images per step (Poisson)
    steps: int | None = None  # non-private: steps to train; private: a cap below the target's steps (None: none)
    latent_dim: int = 32
    width: int = 32
    lr: float = 2e-4
    seed: int = 0  # initialisation, latent draws; DP noise and sampling are secret unless reproducible_noise
    reproducible_noise: bool = False  # tests only: noise from the seed, the result then says it is not private

    def __post_init__(self) -> None:
        if self.epsilon is not None and not self.epsilon > 0:
            raise PrivmedError(f"epsilon must be > 0 (or none for the non-private CGAN), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise PrivmedError(f"delta must be in (0, 1), got {self.delta}")
        if not self.noise_multiplier > 0 or not self.max_grad_norm > 0:
            raise PrivmedError("noise_multiplier and max_grad_norm must be > 0")
        if self.batch_size < 1 or self.latent_dim < 1 or self.width < 4:
            raise PrivmedError("batch_size and latent_dim must be >= 1 and width >= 4")
        if self.epsilon is None and not self.steps:
            raise PrivmedError("the non-private CGAN needs steps=<n> (it has no ε to stop at)")
        if self.steps is not None and self.steps < 1:
            raise PrivmedError(f"steps must be >= 1, got {self.steps}")

    @property
    def private(self) -> bool:
        return self.epsilon is not None


def _one_hot_maps(y: torch.Tensor, n_classes: int, h: int, w: int) -> torch.Tensor:
    return F.one_hot(y, n_classes).float()[:, :, None, None].expand(-1, -1, h, w)


class Generator(nn.Module):
    """(z, label) -> image in [0, 1]: linear to a quarter-size map, two upsample-conv blocks (GroupNorm)."""

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int, latent_dim: int, width: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.shape, self.n_classes = (c, h, w), n_classes
        self.h0, self.w0 = math.ceil(h / 4), math.ceil(w / 4)
        self.fc = nn.Linear(latent_dim + n_classes, 2 * width * self.h0 * self.w0)
        self.net = nn.Sequential(
            nn.GroupNorm(4, 2 * width),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.GroupNorm(4, width),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, c, 3, padding=1),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.fc(torch.cat([z, F.one_hot(y, self.n_classes).float()], 1))
        x = self.net(x.view(len(z), -1, self.h0, self.w0))
        if x.shape[-2:] != self.shape[1:]:
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


class Discriminator(nn.Module):
    """(image, label) -> real/fake logit; the label enters as one-hot channels. GroupNorm: Opacus-ready."""

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int, width: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.n_classes = n_classes
        self.features = nn.Sequential(
            nn.Conv2d(c + n_classes, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.GroupNorm(4, 2 * width),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.features(torch.zeros(1, c + n_classes, h, w)).shape[1]
        self.head = nn.Linear(n, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        maps = _one_hot_maps(y, self.n_classes, x.shape[-2], x.shape[-1])
        return self.head(self.features(torch.cat([x, maps], 1))).squeeze(1)


def steps_for_target(*, epsilon: float, delta: float, q: float, noise_multiplier: float) -> int:
    """The most sampled-Gaussian steps whose RDP ε (Opacus) stays at or below ``epsilon``; 0 if one step exceeds it."""

    def eps(t: int) -> float:
        return history_epsilon([(noise_multiplier, q, t)], delta=delta, accountant="rdp")

    if eps(1) > epsilon:
        return 0
    lo, hi = 1, 2
    while eps(hi) <= epsilon:
        lo, hi = hi, hi * 2
        if hi > 10**8:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if eps(mid) <= epsilon else (lo, mid)
    return lo


@dataclass
class CGANResult:
    """A trained generator, and what its training spent."""

    generator: Generator
    discriminator: nn.Module
    n_classes: int
    config: CGANConfig
    steps: int
    privacy: dict[str, Any]
    wall_seconds: float

    @torch.no_grad()
    def sample(self, n: int, *, seed: int, labels: np.ndarray | None = None) -> ArraySet:
        """``n`` synthetic images (balanced over the classes unless ``labels``), with labels and one id each."""
        gen = torch.Generator().manual_seed(seed)
        if labels is None:
            labels = np.arange(n) % self.n_classes
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.generator.eval()
        images = [
            self.generator(torch.randn(len(y[i : i + 512]), self.config.latent_dim, generator=gen), y[i : i + 512])
            for i in range(0, len(y), 512)
        ]
        x = torch.cat(images).numpy().astype(np.float32)
        return ArraySet(images=x, labels=y.numpy(), patient_ids=np.asarray([f"S{i:06d}" for i in range(len(y))]))


def _d_loss(logits: torch.Tensor, n_real: int) -> torch.Tensor:
    target = torch.cat([torch.ones(n_real), torch.zeros(len(logits) - n_real)])
    return F.binary_cross_entropy_with_logits(logits, target)


def generator_step(
    g: Generator, d: nn.Module, g_opt: torch.optim.Optimizer, n: int, n_classes: int, latent: int, gen: torch.Generator
) -> float:
    """One generator step through a frozen discriminator whose Opacus hooks (if any) are off.

    Nothing is left in the discriminator: no ``grad`` and no ``grad_sample``
    (with hooks on, the backward pass would compute per-sample gradients of
    the generator's loss, stale at the next private step).
    """
    params = list(d.parameters())
    hooks = hasattr(d, "disable_hooks")
    if hooks:
        d.disable_hooks()
    for p in params:
        p.requires_grad_(False)
    try:
        g_opt.zero_grad(set_to_none=True)
        y = torch.randint(0, n_classes, (n,), generator=gen)
        logits = d(g(torch.randn(n, latent, generator=gen), y), y)
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones(n))  # non-saturating generator loss
        loss.backward()
        g_opt.step()
    finally:
        for p in params:
            p.requires_grad_(True)
        if hooks:
            d.enable_hooks()
    return float(loss.detach())


def train_cgan(data: ArraySet, n_classes: int, cfg: CGANConfig) -> CGANResult:
    """Train a (DP-)CGAN on ``data`` (images in [0, 1], [N, C, H, W]); DP stops at ``cfg.epsilon``."""
    if data.images.ndim != 4:
        raise PrivmedError(f"the CGAN takes 2-D images [N, C, H, W]; got shape {data.images.shape}")
    if len(data) < 2:
        raise PrivmedError("the CGAN needs at least 2 training images")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    shape = tuple(int(s) for s in data.images.shape[1:])
    g = Generator(shape, n_classes, cfg.latent_dim, cfg.width)
    d = Discriminator(shape, n_classes, cfg.width)
    g_opt = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    latent_gen = torch.Generator().manual_seed(cfg.seed + 1)  # latents and fake labels: not privacy randomness
    x_all, y_all = torch.from_numpy(data.images), torch.from_numpy(data.labels.astype(np.int64))
    if cfg.private:
        return _train_private(data, n_classes, cfg, g, d, g_opt, d_opt, latent_gen, x_all, y_all, t0)
    steps = 0
    shuffle = torch.Generator().manual_seed(cfg.seed + 2)
    while steps < cfg.steps:
        order = torch.randperm(len(data), generator=shuffle)
        for i in range(0, len(data), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            n_fake = len(idx)
            yf = torch.randint(0, n_classes, (n_fake,), generator=latent_gen)
            with torch.no_grad():
                fake = g(torch.randn(n_fake, cfg.latent_dim, generator=latent_gen), yf)
            d_opt.zero_grad(set_to_none=True)
            loss = _d_loss(d(torch.cat([x_all[idx], fake]), torch.cat([y_all[idx], yf])), len(idx))
            loss.backward()
            d_opt.step()
            generator_step(g, d, g_opt, cfg.batch_size, n_classes, cfg.latent_dim, latent_gen)
            steps += 1
            if steps >= cfg.steps:
                break
    privacy = {"private": False, "epsilon": None, "guarantee": "none: non-private CGAN"}
    return CGANResult(g, d, n_classes, cfg, steps, privacy, time.perf_counter() - t0)


def make_private_discriminator(
    d: nn.Module,
    d_opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: CGANConfig,
    noise_gen: torch.Generator,
) -> tuple[Any, Any, Any, Any]:
    """Opacus on the discriminator: (module, DP optimizer, Poisson loader, engine), RDP accountant chosen explicitly.

    The Poisson sampling and the Gaussian noise both draw from ``noise_gen``
    (the data holder's secret generator).
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size, generator=noise_gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure RNG
        engine = PrivacyEngine(accountant="rdp")  # explicitly RDP (Opacus' default is PRV)
        module, opt, loader = engine.make_private(
            module=d,
            optimizer=d_opt,
            data_loader=loader,
            noise_multiplier=cfg.noise_multiplier,
            max_grad_norm=cfg.max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise_gen,
        )
    return module, opt, loader, engine


def _train_private(
    data: ArraySet,
    n_classes: int,
    cfg: CGANConfig,
    g: Generator,
    d: Discriminator,
    g_opt: torch.optim.Optimizer,
    d_opt: torch.optim.Optimizer,
    latent_gen: torch.Generator,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    t0: float,
) -> CGANResult:
    noise_gen = torch_noise_generator(cfg.seed if cfg.reproducible_noise else None)  # sampling and noise: secret
    d_private, d_opt, loader, engine = make_private_discriminator(d, d_opt, x_all, y_all, cfg, noise_gen)
    q = 1.0 / len(loader)  # Opacus' Poisson rate: expected batch = batch_size
    target = steps_for_target(epsilon=cfg.epsilon, delta=cfg.delta, q=q, noise_multiplier=cfg.noise_multiplier)
    if target == 0:
        d_private._close()
        raise PrivmedError(
            f"ε={cfg.epsilon:g} is spent by a single step at σ={cfg.noise_multiplier:g}, q={q:.3g}; "
            "raise the noise multiplier, lower the batch size or raise epsilon"
        )
    planned = min(target, cfg.steps or target)
    n_fake = max(1, round(q * len(data)))  # fixed: does not depend on which real images were sampled
    steps = 0
    d_private.train()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            while steps < planned:
                for x, y in loader:
                    yf = torch.randint(0, n_classes, (n_fake,), generator=latent_gen)
                    with torch.no_grad():
                        fake = g(torch.randn(n_fake, cfg.latent_dim, generator=latent_gen), yf)
                    d_opt.zero_grad(set_to_none=True)
                    # one forward, one private step on real and fake together: one accountant step per batch
                    loss = _d_loss(d_private(torch.cat([x, fake]), torch.cat([y, yf])), len(x))
                    loss.backward()
                    d_opt.step()
                    steps += 1
                    generator_step(g, d_private, g_opt, n_fake, n_classes, cfg.latent_dim, latent_gen)
                    if steps >= planned:
                        break
    finally:
        epsilon = float(engine.accountant.get_epsilon(delta=cfg.delta)) if steps else 0.0
        d_private._close()
    rdp = sample_level_patient_rdp(data.patient_ids, q=q, noise_multiplier=cfg.noise_multiplier, steps=steps)
    patient_eps = [epsilon_from_rdp(r, delta=cfg.delta) for r in rdp.values()]
    source = "the seed (reproducible_noise)" if cfg.reproducible_noise else "secret entropy of the data holder"
    privacy = {
        "private": True,
        "epsilon": epsilon,
        "delta": cfg.delta,
        "target_epsilon": cfg.epsilon,
        "unit": "image",
        "accountant": "rdp",
        "accountant_history": [list(h) for h in engine.accountant.history],
        "noise_multiplier": cfg.noise_multiplier,
        "max_grad_norm": cfg.max_grad_norm,
        "sample_rate": q,
        "steps": steps,
        "steps_to_target": target,
        "fakes_per_step": n_fake,
        "patient_bound": "sampled Gaussian for a patient with 1 image; unamplified group bound (kC) for k images",
        "patient_epsilon_max": max(patient_eps, default=0.0),
        "patient_epsilon_mean": float(np.mean(patient_eps)) if patient_eps else 0.0,
        "noise_source": source,
        "guarantee": guarantee(
            reproducible=cfg.reproducible_noise,
            statement=f"({epsilon:.3g}, {cfg.delta:g})-DP at image level for the generator and everything made from it",
        ),
        "_patient_rdp": rdp,
    }
    return CGANResult(g, d, n_classes, cfg, steps, privacy, time.perf_counter() - t0)


def charge_ledger(
    result: CGANResult, *, ledger: str | None, ledger_key: str | None, run: str, site: str = "synth"
) -> dict[str, Any] | None:
    """Charge each patient's RDP (image level for 1 image, group bound for k) to the budget ledger; None without one."""
    if ledger is None and ledger_key is None:
        return None
    from privmed.privacy.ledger import Ledger, default_url
    from privmed.privacy.pseudonym import load_key, pseudonyms

    rdp = result.privacy.get("_patient_rdp")
    if rdp is None:
        raise PrivmedError("the non-private CGAN spends no budget: nothing to charge to the ledger")
    key = load_key(ledger_key)
    names = pseudonyms(key, list(rdp))
    book = Ledger(ledger or default_url())
    run_id = f"{run}@{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}.{time.time_ns() % 10**9:09d}"
    book.charge(run_id=run_id, site=site, unit="patient", rdp_by_patient={names[p]: r for p, r in rdp.items()}, seq=1)
    return {"url": book.url, "run_id": run_id, "patients_charged": len(rdp)}


def public_privacy(privacy: dict[str, Any]) -> dict[str, Any]:
    """The privacy report without the per-patient curves (what result files hold)."""
    return {k: v for k, v in privacy.items() if not k.startswith("_")}
