"""Patient-level DP-SGD (P3SGD).

Paper: Wu et al. 2019, "P3SGD: Patient Privacy Preserving SGD for
Regularizing Deep CNNs in Pathological Image Classification" (CVPR). The unit
of privacy is the patient, not the image: each step samples patients
(Poisson, rate q over the site's patients), builds one update per sampled
patient from all of that patient's images, clips it to norm C, sums, adds
Gaussian noise σC and averages over the expected number of patients; the
privacy loss is accounted per patient (Opacus' RDP/PRV accountant with the
patient sampling rate). Faithful: patient sampling, per-patient clipping,
Gaussian noise, patient-level accounting. Differs: a patient's update is
the mean gradient over their images at the current weights (one step, not
the paper's several local steps), and the noise scale is fixed, not the
paper's adaptive schedule. Per-patient clipping: with ``clipping="bookkeeping"``
(default) by book-keeping on Opacus' hooks (:mod:`privmed.privacy.bookkeeping`,
a patient being one clipping unit: no second backward pass, no per-sample
gradients where the ghost norm is cheaper); with ``clipping="opacus"`` from
Opacus' ``GradSampleModule`` per-sample gradients, grouped by patient here
(no library groups them). The two give the same gradient (tested).
Works on any data set with patient ids; with one image per patient it is
sample-level DP-SGD. Ledger: every patient at the site spends the site's
RDP curve (exact for the patient unit).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from privmed.errors import PrivmedError
from privmed.privacy.accounted import parse_options
from privmed.privacy.accounting import rdp_sgm
from privmed.privacy.base import Plan
from privmed.privacy.bookkeeping import BookkeepingGradSampleModule
from privmed.privacy.dp import DPSGD, DPSGDConfig
from privmed.privacy.randomness import torch_noise_generator


@dataclass(frozen=True)
class P3SGDConfig(DPSGDConfig):
    patients_per_batch: int | None = None  # expected; default: as many images per step as the non-private batch

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patients_per_batch is not None and self.patients_per_batch < 1:
            raise PrivmedError(f"patients_per_batch must be at least 1, got {self.patients_per_batch}")
        if self.grad_sample_mode == "ew" and self.clipping == "opacus":
            raise PrivmedError("P3SGD needs per-sample gradients: grad_sample_mode must be hooks or functorch")


def per_patient_clip(
    grads: list[torch.Tensor], patient_index: torch.Tensor, n_patients: int, max_norm: float
) -> list[torch.Tensor]:
    """Sum of per-patient mean gradients, each clipped to ``max_norm``.

    ``grads``: per-sample gradients [B, ...] per parameter; ``patient_index``:
    [B] patient of each sample (0..n_patients-1).
    """
    counts = torch.bincount(patient_index, minlength=n_patients).clamp_min(1).float()
    per_patient = [
        torch.zeros((n_patients, *g.shape[1:])).index_add_(0, patient_index, g) / counts.view(-1, *[1] * (g.dim() - 1))
        for g in grads
    ]
    norms = torch.sqrt(sum(p.flatten(1).pow(2).sum(1) for p in per_patient))
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return [(p * scale.view(-1, *[1] * (p.dim() - 1))).sum(0) for p in per_patient]


def patient_gradients(
    module: torch.nn.Module,
    criterion: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    patients: torch.Tensor,
    n_patients: int,
    max_norm: float,
) -> tuple[list[torch.Tensor], float]:
    """Sum over patients of each patient's clipped mean gradient, and the summed loss.

    ``module`` is an Opacus ``GradSampleModule`` with ``loss_reduction="sum"``
    and ``criterion`` sums over the batch, so ``grad_sample`` holds each
    image's own gradient.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad_sample = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' full-backward-hook warning on inputs without grad
        loss = criterion(module(x), y)
        loss.backward()
    summed = per_patient_clip([p.grad_sample for p in params], patients, n_patients, max_norm)
    for p in params:
        p.grad_sample, p.grad = None, None
    return summed, float(loss.detach())


def bookkeeping_patient_gradients(
    module: BookkeepingGradSampleModule,
    criterion: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    patients: torch.Tensor,
    n_patients: int,
    max_norm: float,
) -> tuple[list[torch.Tensor], float]:
    """:func:`patient_gradients` by book-keeping: each patient one clipping unit (``max_norm`` is the module's)."""
    params = [p for p in module.parameters() if p.requires_grad]
    loss = criterion(module(x), y)
    module.clipped_backward(loss, unit_of=patients, n_units=n_patients)
    summed = [p.grad for p in params]
    for p in params:
        p.grad = None
    return summed, float(loss.detach())


class P3SGD(DPSGD):
    name = "p3sgd"
    unit = "patient"

    def prepare(self, plan: Plan) -> None:
        if plan.config.task != "classification":
            raise PrivmedError(
                "p3sgd needs a per-image loss: it supports --task classification only (use dp-sgd for segmentation)"
            )
        super().prepare(plan)

    def sampling(self, data: Any, batch_size: int) -> tuple[int, str, float]:
        """Patients, sampled at q = 1/ceil(patients / patients per batch)."""
        n_pat = data.n_patients
        per_batch = self.cfg.patients_per_batch or max(1, round(batch_size * n_pat / max(len(data), 1)))
        q = 1.0 / max(1, math.ceil(n_pat / per_batch))
        return n_pat, "patient", q

    def patient_rdp(self, site_index: int, steps: int) -> dict[str, np.ndarray]:
        rdp = rdp_sgm(q=self.sample_rate[site_index], noise_multiplier=self.sigma[site_index], steps=steps)
        return {str(p): rdp for p in np.unique(self.sites[site_index][1].patient_ids)}

    def _train(
        self,
        i: int,
        model: torch.nn.Module,
        data: Any,
        *,
        task: str,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
    ) -> dict[str, float]:
        from opacus import GradSampleModule

        from privmed.tasks import DivergedError, loss_fn, targets

        gen = torch_noise_generator(seed if self.reproducible else None)  # sampling and noise: the site's secret
        pids, patient_of = np.unique(data.patient_ids, return_inverse=True)
        patient_of = torch.from_numpy(patient_of.astype(np.int64))
        x_all, y_all = torch.from_numpy(data.images), torch.from_numpy(targets(data, task))
        criterion = loss_fn(task)
        criterion.reduction = "sum"
        q, sigma, c = self.sample_rate[i], self.sigma[i], self.cfg.max_grad_norm
        # the loss is summed, so per-sample gradients must not be rescaled by the batch size
        if self.cfg.clipping == "bookkeeping":
            module = BookkeepingGradSampleModule(model, max_grad_norm=c, loss_reduction="sum")
            clipped = bookkeeping_patient_gradients
        else:
            functorch = self.cfg.grad_sample_mode == "functorch"
            module = GradSampleModule(model, loss_reduction="sum", force_functorch=functorch)
            clipped = patient_gradients
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        expected_patients = max(q * len(pids), 1e-12)  # the noisy sum is averaged over the expected batch
        steps, total, count = 0, 0.0, 0
        module.train()
        try:
            for _ in range(epochs * round(1 / q)):
                chosen = torch.rand(len(pids), generator=gen) < q
                idx = torch.nonzero(chosen[patient_of]).flatten()
                remap = torch.cumsum(chosen.long(), 0) - 1
                summed = [torch.zeros_like(p) for p in params]
                if len(idx):
                    summed, loss = clipped(
                        module, criterion, x_all[idx], y_all[idx], remap[patient_of[idx]], int(chosen.sum()), c
                    )
                    if not math.isfinite(loss):
                        raise DivergedError("P3SGD diverged (non-finite loss); lower the learning rate (--lr)")
                    total, count = total + loss, count + len(idx)
                for p, s in zip(params, summed):
                    p.grad = (s + torch.normal(0.0, sigma * c, size=s.shape, generator=gen)) / expected_patients
                opt.step()
                opt.zero_grad(set_to_none=True)
                self.accountants[i].step(noise_multiplier=sigma, sample_rate=q)
                steps += 1
        finally:  # charge what was actually spent, even if training failed mid-way
            self.charge(i, self.patient_rdp(i, steps))
            module._close()
        return {"train_loss": total / max(count, 1), "num-examples": float(len(data)), "dp-steps": float(steps)}


def make(options: dict[str, Any]) -> P3SGD:
    cfg, budget = parse_options(P3SGDConfig, options, "p3sgd")
    return P3SGD(cfg, budget)
