"""How hard the phantom is: the figures its calibration tests and ``benchmarks/phantom_calibration.py`` check.

Four measurements on one phantom config, all scored on the held-out test
patients (:func:`privmed.data.phantom.phantom_federation`, natural split):

- ``baselines``: logistic regression on simple image statistics (a 32-bin
  histogram and percentiles of each image) and on raw pixels; also the v1
  failure mode, the image maximum and 90th percentile used alone as a score;
- ``centralised``: the default network (``cnn``) trained on all sites' pooled
  training patients until the validation loss plateaus, best-validation
  checkpoint;
- ``site_alone``: the same recipe on one site's own training/validation
  patients (what a hospital could do alone);
- ``cross_scanner``: the models trained on site 0 alone and on site 1 alone,
  each scored on its own scanner's test patients and on the other sites'
  (same recipe).

The training loop is deliberately plain torch (Adam, mini-batches, early
stopping on validation loss), independent of the protocol harness, so that the
phantom's difficulty is measured apart from any protocol's budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from privmed.data.base import ArraySet, Federation
from privmed.models import build_model

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 100)


@dataclass(frozen=True)
class TrainRecipe:
    """Plain supervised training to a validation plateau (the calibration's "to convergence")."""

    lr: float = 2e-3
    batch_size: int = 32
    patience: int = 10  # epochs without a better validation loss before stopping...
    min_steps: int = (
        500  # ...once at least this many optimiser steps are done (small sites get as many steps as large ones)
    )
    max_steps: int = 2000
    model: str = "cnn"


@dataclass(frozen=True)
class Scores:
    auroc: float
    balanced_accuracy: float


def image_statistics(images: np.ndarray) -> np.ndarray:
    """Per image: a 32-bin intensity histogram on [0, 1] (fractions) and percentiles."""
    flat = images.reshape(len(images), -1)
    hist = np.stack([np.histogram(x, bins=32, range=(0.0, 1.0))[0] for x in flat]) / flat.shape[1]
    return np.hstack([hist, np.percentile(flat, PERCENTILES, axis=1).T])


def _logistic_auroc(train: ArraySet, val: ArraySet, test: ArraySet, features) -> float:
    """Test AUROC of a logistic regression whose regularisation is chosen on validation AUROC."""
    scaler = StandardScaler().fit(features(train.images))
    xtr, xva, xte = (scaler.transform(features(a.images)) for a in (train, val, test))
    best, best_c = -1.0, 1.0
    for c in (1e-3, 1e-2, 1e-1, 1.0):
        m = LogisticRegression(C=c, max_iter=2000).fit(xtr, train.labels)
        auc = roc_auc_score(val.labels, m.predict_proba(xva)[:, 1])
        if auc > best:
            best, best_c = auc, c
    m = LogisticRegression(C=best_c, max_iter=2000).fit(
        np.vstack([xtr, xva]), np.concatenate([train.labels, val.labels])
    )
    return float(roc_auc_score(test.labels, m.predict_proba(xte)[:, 1]))


def baselines(fed: Federation, *, pixels: bool = True) -> dict[str, float]:
    """Test AUROC of the simple baselines (binary task), trained on the pooled training patients.

    ``pixels=False`` leaves out the raw-pixel (voxel) regression, the slow one on 32³ volumes.
    """
    train, val, test = fed.pooled("train"), fed.pooled("val"), fed.pooled("test")
    flat = test.images.reshape(len(test), -1)
    out = {
        "histogram_logreg": _logistic_auroc(train, val, test, image_statistics),
        "max_alone": float(roc_auc_score(test.labels, flat.max(1))),
        "p90_alone": float(roc_auc_score(test.labels, np.percentile(flat, 90, axis=1))),
    }
    if pixels:
        out["pixels_logreg"] = _logistic_auroc(train, val, test, lambda x: x.reshape(len(x), -1))
    return out


def _predict(model: torch.nn.Module, data: ArraySet) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(data.images[i : i + 64])) for i in range(0, len(data), 64)])
    return torch.softmax(logits, 1).numpy()


def score(model: torch.nn.Module, data: ArraySet) -> Scores:
    p = _predict(model, data)
    auc = roc_auc_score(data.labels, p[:, 1]) if p.shape[1] == 2 else roc_auc_score(data.labels, p, multi_class="ovr")
    return Scores(auroc=float(auc), balanced_accuracy=float(balanced_accuracy_score(data.labels, p.argmax(1))))


def train_to_plateau(
    train: ArraySet, val: ArraySet, n_classes: int, *, seed: int, recipe: TrainRecipe = TrainRecipe()
) -> tuple[torch.nn.Module, int]:
    """Train until the validation loss has not improved for ``patience`` epochs; return the best checkpoint and its
    epoch."""
    model = build_model(
        recipe.model,
        in_channels=train.images.shape[1],
        n_classes=n_classes,
        seed=seed,
        spatial_dims=train.images.ndim - 2,  # 3 for volumes [N, C, D, H, W]
    )
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    xv, yv = torch.from_numpy(val.images), torch.from_numpy(val.labels)
    loss_fn = torch.nn.CrossEntropyLoss()
    best_loss, best_state, best_epoch, steps = float("inf"), None, 0, 0
    epoch = 0
    while steps < recipe.max_steps:
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(recipe.batch_size):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
        model.eval()
        with torch.no_grad():
            vloss = float(loss_fn(model(xv), yv)) if len(xv) else -epoch
        if vloss < best_loss:
            best_loss, best_epoch = vloss, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= recipe.patience and steps >= recipe.min_steps:
            break
        epoch += 1
    model.load_state_dict(best_state)
    return model, best_epoch


def centralised(fed: Federation, *, seed: int, recipe: TrainRecipe = TrainRecipe()) -> Scores:
    model, _ = train_to_plateau(fed.pooled("train"), fed.pooled("val"), fed.n_classes, seed=seed, recipe=recipe)
    return score(model, fed.pooled("test"))


def site_alone(fed: Federation, site: int, *, seed: int, recipe: TrainRecipe = TrainRecipe()) -> Scores:
    s = fed.sites[site]
    model, _ = train_to_plateau(s.train, s.val, fed.n_classes, seed=seed, recipe=recipe)
    return score(model, fed.pooled("test"))


def cross_scanner(
    fed: Federation, sites: tuple[int, ...] = (0, 1), *, seed: int, recipe: TrainRecipe = TrainRecipe()
) -> dict[str, float]:
    """Site effects: each of ``sites``' models, trained alone, on its own scanner's test patients and on the others'.

    ``drop`` is own minus the mean over the other scanners, in balanced
    accuracy, averaged over ``sites`` (the two largest by default: a single
    site's drop also reflects whether its scanner happens to be an easy or
    a hard one).
    """
    out: dict[str, float] = {}
    for site in sites:
        s = fed.sites[site]
        model, _ = train_to_plateau(s.train, s.val, fed.n_classes, seed=seed, recipe=recipe)
        own = score(model, s.test).balanced_accuracy
        others = float(np.mean([score(model, o.test).balanced_accuracy for k, o in enumerate(fed.sites) if k != site]))
        out.update({f"site{site}_own": own, f"site{site}_others": others, f"site{site}_drop": own - others})
    out["drop"] = float(np.mean([out[f"site{site}_drop"] for site in sites]))
    return out


# Volumes (phantom:v2?volume=1, 32³): one volume per visit gives a quarter of the 2-D images; a batch of 16 gives 8
# steps per epoch (2-D: 16). The 3-D CNN learns slowly: patience 5 and 150-400 steps stopped it at AUROC 0.69, these
# bounds reach 0.98 (README, "3-D volumes").
VOLUME_RECIPE = TrainRecipe(batch_size=16, patience=10, min_steps=400, max_steps=800)


def calibrate(
    fed: Federation, *, seed: int, recipe: TrainRecipe = TrainRecipe(), cross: bool = True
) -> dict[str, float]:
    """Every calibration figure for one federation (binary task): one row of the calibration table.

    ``cross=False`` leaves out the cross-scanner models (the volume calibration does, for time).
    """
    row = {f"baseline_{k}": v for k, v in baselines(fed).items()}
    central = centralised(fed, seed=seed, recipe=recipe)
    row.update(central_auroc=central.auroc, central_bacc=central.balanced_accuracy)
    sizes = [len(s.train) for s in fed.sites]
    for rank, site in enumerate(sorted(range(len(sizes)), key=lambda s: sizes[s])[:2]):
        alone = site_alone(fed, site, seed=seed, recipe=recipe)
        row.update(
            {
                f"smallest{rank + 1}_site": site,
                f"smallest{rank + 1}_bacc": alone.balanced_accuracy,
                f"smallest{rank + 1}_auroc": alone.auroc,
            }
        )
    if cross:
        row.update({f"cross_{k}": v for k, v in cross_scanner(fed, seed=seed, recipe=recipe).items()})
    return row
