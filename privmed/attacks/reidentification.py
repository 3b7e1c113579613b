"""Re-identification by a fresh attacker: can images (or their encodings) be linked to the same patient?

Privacy-Net's claim is that its encodings hide who the patient is. The
co-trained discriminator failing proves little (the encoder was trained to
beat *that* network), so the attacker here is **fresh**: a Siamese network
(the discriminator's architecture, :class:`privmed.obfuscation.Siamese`)
trained after the fact, on the frozen encoder's outputs, on patients whose
identities the attacker knows (its training cohort), and scored on patients
it has never seen (the test cohort):

- **verification AUC**: same-patient pairs against different-patient pairs,
  over every pair of the test cohort's images from the same site (null: 0.5);
- **top-1 retrieval**: for every test image, is its best-scoring match among
  the other test images of its site one of the same patient's? (null: the
  chance of drawing one at random, (k−1)/(N−1) averaged over images with k
  images of their patient among the site's N).

Pairs, in training and in scoring, are within a site: whoever receives an
encoding knows which site sent it, and images of one patient share a
scanner, so an attacker scored across sites would be rewarded for telling
scanners apart (on the phantom that alone gave a verification AUC near 0.8).

The same attacker on the raw images is the positive control; chance is the
null. Written by hand: no attack library ships a Siamese re-identification
attack on encodings; the pair construction is Privacy-Net's own
(:func:`privmed.obfuscation.pair_batches`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from privmed.obfuscation import Siamese, pair_batches, pair_targets


def chance_top1(patient_ids: np.ndarray, groups: np.ndarray) -> float:
    """Expected top-1 retrieval of a random guess within its group: mean over images of (k−1)/(N−1)."""
    out = []
    for g in np.unique(groups):
        ids = patient_ids[groups == g]
        _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        out.append((counts[inverse] - 1) / max(len(ids) - 1, 1))
    return float(np.mean(np.concatenate(out)))


def train_attacker(
    images: np.ndarray,
    patient_ids: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int,
) -> Siamese:
    """A Siamese same-patient classifier trained on identity-labelled ``images`` (encodings or raw), pairs within
    a group (site)."""
    torch.manual_seed(seed)
    attacker = Siamese(images.shape[1], spatial_dims=images.ndim - 2)
    opt = torch.optim.Adam(attacker.parameters(), lr=lr)
    bce = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    attacker.train()
    for _ in range(epochs):
        for idx in pair_batches(patient_ids, batch_size, rng, groups):
            left, right, same = pair_targets(len(idx) // 2)
            x = x_all[idx]
            opt.zero_grad(set_to_none=True)
            bce(attacker(x[left], x[right]), same).backward()
            opt.step()
    return attacker


@torch.no_grad()
def pair_scores(attacker: Siamese, images: np.ndarray) -> np.ndarray:
    """[N, N] same-patient logits for every pair of ``images`` (the diagonal is -inf)."""
    attacker.eval()
    emb = attacker.embed(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
    diff = torch.abs(emb[:, None, :] - emb[None, :, :])
    scores = attacker.head(diff)[..., 0].numpy().astype(np.float64)
    np.fill_diagonal(scores, -np.inf)
    return scores


def score(attacker: Siamese, images: np.ndarray, patient_ids: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Verification AUC and top-1 retrieval of ``attacker`` on a cohort it has not seen, beside their nulls.

    Pairs and candidates are within a group (the site that sent the image): the server knows which site
    sent each encoding, so telling sites (scanners) apart identifies nobody.
    """
    from sklearn.metrics import roc_auc_score

    s = pair_scores(attacker, images)
    s[groups[:, None] != groups[None, :]] = -np.inf
    same = patient_ids[:, None] == patient_ids[None, :]
    upper = np.triu_indices(len(images), k=1)
    within = (groups[:, None] == groups[None, :])[upper]
    auc = float(roc_auc_score(same[upper][within], s[upper][within]))
    best = s.argmax(1)
    top1 = float(np.mean(patient_ids[best] == patient_ids))
    return {
        "verification_auc": auc,
        "top1": top1,
        "null_verification_auc": 0.5,
        "null_top1": chance_top1(patient_ids, groups),
        "n_patients": int(len(np.unique(patient_ids))),
        "n_images": int(len(images)),
    }


def cohort(patient_ids: np.ndarray, max_patients: int, seed: int) -> np.ndarray:
    """Indices of the images of at most ``max_patients`` patients with two or more images (drawn with ``seed``)."""
    names, counts = np.unique(patient_ids, return_counts=True)
    names = names[counts >= 2]
    if len(names) > max_patients:
        names = np.sort(np.random.default_rng(seed).choice(names, size=max_patients, replace=False))
    return np.flatnonzero(np.isin(patient_ids, names))


def by_site(sets: list, max_patients: int, seed: int):
    """The images of up to ``max_patients`` patients of each set (site), pooled, with each image's site index."""
    from privmed.data.base import ArraySet

    parts = [s.subset(cohort(s.patient_ids, max_patients, seed + i)) for i, s in enumerate(sets)]
    groups = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    return ArraySet.concat(parts), groups


def reidentify(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    epochs: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Train a fresh attacker on one identity-labelled cohort (images, patient ids, sites); score it on another."""
    attacker = train_attacker(*train, epochs=epochs, seed=seed)
    return score(attacker, *test)
