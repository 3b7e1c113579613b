"""Privacy-Net's three networks and their adversarial training (Kim, Dolz, Jodoin & Desrosiers 2019).

Paper: B. N. Kim, J. Dolz, P.-M. Jodoin, C. Desrosiers, "Privacy-Net: an
adversarial approach for identity-obfuscated segmentation of medical images"
(arXiv:1909.04087; IEEE TMI 2021). An **encoder** E turns an image into an
image-sized encoding that is sent instead of the image; a **segmenter** S
segments the encoding; a **Siamese discriminator** D gets two encodings and
says whether they come from the same patient. D minimises its binary
cross-entropy on same/different pairs; E and S minimise the segmentation loss
plus λ times an adversarial term that makes D fail.

Faithful: E is an image-to-image U-Net (MONAI ``UNet``) whose output has the
image's size; S is a U-Net on E's output; D is a Siamese network (one shared
embedding for both encodings, a head on the absolute difference of the
embeddings) trained on balanced same-patient / different-patient pairs from
the same mini-batch (each batch holds two images of each of its patients);
E+S and D are updated alternately, every batch; λ weighs the adversarial
term.

Differs: (1) the adversarial term is a *confusion* loss — the cross-entropy
of D's output against the uniform target 0.5 — rather than the negated
cross-entropy of D (the paper's and its code's loss is Dice − λ·CE_D;
maximising D's loss is unstable, and E can win by flipping D's answers,
which still identifies the patient); (2) the segmentation loss
is MONAI's Dice + cross-entropy (``DiceCELoss``), the loss every other
privmed segmenter trains with, not the paper's Dice alone; (3) 2-D phantom
slices (four slices per patient visit) instead of 3-D brain MRI volumes, and
the networks are small (CPU); (4) Adam for all three networks at the run's
learning rate (the paper's code: Adam 1e-4); D is a small conv net, not the
code's DenseNet/ResNet features; (5) D takes ``d_steps`` steps (default 5)
per E+S step: with one, the encoder learnt to fool the weak co-trained D
(accuracy ~0.66) while a fresh attacker re-identified its encodings as well
at λ = 10 as at λ = 0. The paper trains E, S and D jointly at one place; the
protocol (:mod:`privmed.protocols.privacy_net`) trains them at each site on
its own patients — patient identities, which D needs, never leave a site —
and averages the sites' networks (FedAvg).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from privmed.data.base import ArraySet
from privmed.errors import PrivmedError
from privmed.tasks import DivergedError, batch_loss, loss_fn, targets

# The record key a coordinator sets in the ``train`` config to give the sites λ.
LAM_KEY = "privacy-net-lam"
D_STEPS_KEY = "privacy-net-d-steps"  # discriminator steps per encoder-segmenter step


def _unet(in_channels: int, out_channels: int, channels: tuple[int, ...], spatial_dims: int) -> nn.Module:
    from monai.networks.nets import UNet

    strides = (2,) * (len(channels) - 1)
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=strides,
        num_res_units=1,
        norm="instance",
    )


class Siamese(nn.Module):
    """Same patient or not: a shared conv embedding of each input, a linear head on |e1 - e2| (a logit)."""

    def __init__(self, in_channels: int, width: int = 16, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        gap = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(conv(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(), pool(2))

        self.embed = nn.Sequential(
            block(in_channels, width), block(width, 2 * width), block(2 * width, 2 * width), gap(1), nn.Flatten()
        )
        self.head = nn.Linear(2 * width, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.abs(self.embed(a) - self.embed(b)))[:, 0]


class PrivacyNet(nn.Module):
    """E (site), S (server) and D (trainer only) as one module; ``forward`` is S(E(x)), what the harness evaluates."""

    def __init__(self, in_channels: int, n_classes: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.encoder = _unet(in_channels, in_channels, (8, 16), spatial_dims)
        self.segmenter = _unet(in_channels, n_classes, (16, 32, 64), spatial_dims)
        self.discriminator = Siamese(in_channels, spatial_dims=spatial_dims)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """What leaves the site: an image-sized encoding."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter(self.encoder(x))

    def train_site(self, data: ArraySet, *, config, **kw) -> dict[str, float]:
        """The site's training visit (privmed.site calls it for a network with its own objective)."""
        lam = float(config.get(LAM_KEY, 0.0))
        d_steps = int(config.get(D_STEPS_KEY, 1))
        return adversarial_train(self, data, lam=lam, d_steps=d_steps, **kw)


def pair_batches(
    patient_ids: np.ndarray, batch_size: int, rng: np.random.Generator, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """One epoch of batches, each two images of each of ``batch_size // 2`` patients (pairs at [2i, 2i+1]).

    ``groups`` (e.g. the site of each image): every batch draws its patients from one group, chosen in
    proportion to its images, so different-patient pairs never differ by group (a scanner is not an identity).
    """
    groups = np.zeros(len(patient_ids), dtype=np.int64) if groups is None else np.asarray(groups)
    by_group: dict = {}
    for p in np.unique(patient_ids):
        idx = np.flatnonzero(patient_ids == p)
        if len(idx) >= 2:
            by_group.setdefault(groups[idx[0]], {})[str(p)] = idx
    by_group = {g: v for g, v in by_group.items() if len(v) >= 2}
    if not by_group:
        raise PrivmedError(
            "Privacy-Net's discriminator needs at least 2 patients with 2 or more images each at every site; "
            f"this site has {len(np.unique(patient_ids))} patients, too few with two images"
        )
    keys = sorted(by_group)
    weight = np.array([sum(len(v) for v in by_group[g].values()) for g in keys], dtype=float)
    per_batch = max(2, batch_size // 2)
    steps = max(1, len(patient_ids) // (2 * per_batch))
    out = []
    for _ in range(steps):
        patients = by_group[keys[rng.choice(len(keys), p=weight / weight.sum())]]
        names = sorted(patients)
        chosen = rng.choice(len(names), size=min(per_batch, len(names)), replace=False)
        out.append(np.concatenate([rng.choice(patients[names[c]], size=2, replace=False) for c in chosen]))
    return out


def pair_targets(n_patients: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a batch laid out as pair_batches makes it: left, right indices and same-patient labels.

    Every patient's own pair (2i, 2i+1) is a positive; as many negatives pair image 2i with image 2j+1 of the
    next patient (j = i + 1 mod n), so the classes are balanced.
    """
    i = torch.arange(n_patients)
    left = torch.cat([2 * i, 2 * i])
    right = torch.cat([2 * i + 1, 2 * ((i + 1) % n_patients) + 1])
    same = torch.cat([torch.ones(n_patients), torch.zeros(n_patients)])
    return left, right, same


def adversarial_train(
    model: PrivacyNet,
    data: ArraySet,
    *,
    lam: float,
    d_steps: int = 1,
    task: str = "segmentation",
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    optimizer_state: dict | None = None,
) -> dict[str, float]:
    """Train E, S and D in place; alternate a D step (its pair BCE) and an E+S step (segmentation + λ·confusion).

    ``optimizer_state``: a site's memory between visits (both Adam states), as for plain training.
    """
    if task != "segmentation":
        raise PrivmedError(f"Privacy-Net segments; this run's task is {task} (use --task segmentation)")
    if len(data) == 0:
        raise PrivmedError("cannot train on an empty data set (a site has no training images)")
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(data.images)
    y_all = torch.from_numpy(targets(data, task))
    seg_loss = loss_fn(task)
    bce = nn.BCEWithLogitsLoss()
    es = torch.optim.Adam([*model.encoder.parameters(), *model.segmenter.parameters()], lr=lr)
    d_opt = torch.optim.Adam(model.discriminator.parameters(), lr=lr)
    if optimizer_state:
        es.load_state_dict(optimizer_state["adam"])
        d_opt.load_state_dict(optimizer_state["adam-discriminator"])
    model.train()
    totals = {"train_loss": 0.0, "discriminator_loss": 0.0, "discriminator_accuracy": 0.0}
    steps = 0
    for _ in range(epochs):
        for idx in pair_batches(data.patient_ids, batch_size, rng):
            x, y = x_all[idx], y_all[idx]
            left, right, same = pair_targets(len(idx) // 2)
            # the discriminator's steps, on encodings it cannot push back into the encoder
            with torch.no_grad():
                z = model.encoder(x)
            for _ in range(d_steps):
                d_opt.zero_grad(set_to_none=True)
                logit = model.discriminator(z[left], z[right])
                d_loss = bce(logit, same)
                d_loss.backward()
                d_opt.step()
            # the encoder's and segmenter's step: segment well, leave the discriminator at chance
            es.zero_grad(set_to_none=True)
            z = model.encoder(x)
            loss = batch_loss(seg_loss, model.segmenter(z), y, task)
            if lam > 0:
                confusion = bce(model.discriminator(z[left], z[right]), torch.full_like(same, 0.5))
                loss = loss + lam * confusion
            if not torch.isfinite(loss):
                raise DivergedError("training diverged (non-finite loss); lower the learning rate (--lr)")
            loss.backward()
            es.step()
            model.discriminator.zero_grad(set_to_none=True)  # E's step left gradients in D; D never applies them
            totals["train_loss"] += loss.item()
            totals["discriminator_loss"] += d_loss.item()
            totals["discriminator_accuracy"] += float(((logit > 0).float() == same).float().mean())
            steps += 1
    if optimizer_state is not None:
        optimizer_state["adam"] = es.state_dict()
        optimizer_state["adam-discriminator"] = d_opt.state_dict()
    out = {k: v / max(steps, 1) for k, v in totals.items()}
    out["num-examples"] = float(len(data))
    return out


@torch.no_grad()
def encode(model: PrivacyNet, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """The encodings a site would send for ``images`` (float32, same shape)."""
    model.eval()
    return torch.cat(
        [model.encode(torch.from_numpy(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    ).numpy()
