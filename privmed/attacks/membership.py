"""Membership inference on a released model: was this image (this patient) in training?

Papers: Yeom, Giacomelli, Fredrikson, Jha 2018, "Privacy Risk in Machine
Learning: Analyzing the Connection to Overfitting" (loss threshold: members
have lower loss); Carlini, Chien, Nasr, Song, Terzis, Tramèr 2022,
"Membership Inference Attacks From First Principles" (LiRA).

Threat model: the attacker queries the final model (black box: output
probabilities) on candidate images and owns data of the same distribution
(here: a fresh phantom cohort from another data seed, never seen by the
run), with which it trains shadow models by the target's recipe.

LiRA variant: **offline** (Carlini et al. Sec. VI-C): shadows are trained
only on the attacker's own data (all OUT for every candidate); per candidate
the attacker fits a Gaussian to the shadows' logit-scaled confidences
``phi = log(p_y / (1 - p_y))`` and scores the target's ``phi`` by its one-sided
z-score against that OUT distribution. With few shadows the per-example
variance is too noisy; the paper then uses one **global variance** shared by
all examples (Carlini et al. Sec. VI-B, "fixed variance"), privmed's default
(``LiraConfig.global_variance``). Online LiRA would need shadows trained with
every candidate IN, i.e. the run's private data, which this attacker does not
hold. Differs from the paper: no augmentation queries; 8 shadows by default
(the paper: 64-256).
The harness (:mod:`privmed.attacks.harness`) chooses the attacker's data
from the target's own sites (same scanners) but from patients who are
neither members nor candidates, the candidates (members = training images,
non-members = other held-out patients' images), scores at image and patient
level (:func:`privmed.attacks.metrics.per_patient`), and reports beside the
target's figures the null (chance, AUC 0.5) and a positive control: LiRA
against an undefended model of the target's network trained to memorise 32
attacker images (whose membership the harness knows), scored with the
shadows that did not train on each image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from privmed.data.base import ArraySet
from privmed.errors import PrivmedError

# Seed salts, each keeping one draw apart from the others made from the same seed:
SHADOW_SPLIT_SALT = 7  # the shadow models' halves of the attacker's data and their initialisations
CANDIDATE_SALT = 11  # which members and non-members are candidates


@dataclass(frozen=True)
class LiraConfig:
    n_shadows: int = 8
    shadow_fraction: float = 0.5  # each shadow trains on this fraction of the attacker's data
    epochs: int = 10
    seed: int = 0
    global_variance: bool = True  # one variance for all candidates (Carlini et al.'s choice with few shadows)

    def __post_init__(self) -> None:
        if self.n_shadows < 2:
            raise PrivmedError(f"LiRA needs at least 2 shadow models (to fit a variance), got {self.n_shadows}")
        if not 0 < self.shadow_fraction <= 1 or self.epochs < 1:
            raise PrivmedError("LiRA needs 0 < shadow_fraction <= 1 and epochs >= 1")


def true_class_proba(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return proba[np.arange(len(labels)), labels]


def loss_threshold_scores(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Yeom et al.: the membership score is minus the cross-entropy loss (threshold swept by the ROC)."""
    return np.log(np.clip(true_class_proba(proba, labels), 1e-12, None))


def logit_confidence(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's ``phi = log(p_y) - log(1 - p_y)``, the confidence made roughly Gaussian."""
    p = np.clip(true_class_proba(proba, labels).astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def lira_offline_scores(
    target_phi: np.ndarray, shadow_out_phi: np.ndarray, *, global_variance: bool = False
) -> np.ndarray:
    """Offline LiRA: z-score of the target's ``phi`` against the OUT shadows' (shadows x candidates).

    ``global_variance``: one standard deviation pooled over all candidates (the
    root mean of the per-candidate variances) instead of each candidate's own.
    """
    mu = shadow_out_phi.mean(0)
    var = shadow_out_phi.var(0, ddof=1)
    sd = np.sqrt(var.mean() if global_variance else var) + 1e-6
    return (target_phi - mu) / sd


def train_shadows(
    build: Callable[[int], nn.Module],
    aux: ArraySet,
    *,
    config: LiraConfig,
    batch_size: int,
    lr: float,
    task: str = "classification",
    members_out: list[np.ndarray] | None = None,
) -> list[nn.Module]:
    """Shadow models on random halves of the attacker's own data, by the target's training recipe.

    ``members_out``: if given, receives each shadow's training indices into ``aux`` (for a positive control).
    """
    from privmed.tasks import train_local

    rng = np.random.default_rng([config.seed, SHADOW_SPLIT_SALT])
    n_take = max(1, int(round(config.shadow_fraction * len(aux))))
    shadows = []
    for _ in range(config.n_shadows):
        model = build(int(rng.integers(2**31)))
        idx = np.sort(rng.choice(len(aux), size=n_take, replace=False))
        if members_out is not None:
            members_out.append(idx)
        train_local(
            model,
            aux.subset(idx),
            task=task,
            epochs=config.epochs,
            batch_size=batch_size,
            lr=lr,
            seed=int(rng.integers(2**31)),
        )
        shadows.append(model)
    return shadows


def lira(
    target_proba: np.ndarray, candidates: ArraySet, shadows: list[nn.Module], *, global_variance: bool = True
) -> np.ndarray:
    """Offline LiRA membership scores of ``candidates`` (higher = member)."""
    from privmed.tasks import predict_proba

    out_phi = np.stack([logit_confidence(predict_proba(m, candidates), candidates.labels) for m in shadows])
    return lira_offline_scores(
        logit_confidence(target_proba, candidates.labels), out_phi, global_variance=global_variance
    )


def candidates(
    members: ArraySet, non_members: ArraySet, *, seed: int, max_per_side: int = 500
) -> tuple[ArraySet, np.ndarray]:
    """A balanced candidate set (harness side): equal numbers of members and non-members, by patient."""
    rng = np.random.default_rng([seed, CANDIDATE_SALT])

    def take(data: ArraySet, n: int) -> ArraySet:
        pids = rng.permutation(np.unique(data.patient_ids))
        keep, count = [], 0
        for p in pids:
            idx = np.flatnonzero(data.patient_ids == p)
            if count + len(idx) > n and keep:
                break
            keep.append(idx)
            count += len(idx)
        return data.subset(np.sort(np.concatenate(keep)))

    n = min(len(members), len(non_members), max_per_side)
    if n == 0:
        raise PrivmedError("membership inference needs both training and held-out images")
    m, o = take(members, n), take(non_members, n)
    return ArraySet.concat([m, o]), np.r_[np.ones(len(m), bool), np.zeros(len(o), bool)]
