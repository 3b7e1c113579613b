"""How good and how private a synthetic data set is: TSTR, a Fréchet feature distance, membership inference.

- TSTR (train on synthetic, test on real; Esteban et al. 2017, the paper's
  evaluation): privmed's default classifier (``cnn``) and a logistic
  regression on the pixels are trained on the synthetic labelled images and
  tested on the real test split; train-on-real (TRTR) on the real training
  images is the reference. AUROC, accuracy, precision, recall, F1 (positive
  class 1 for two classes, macro averages otherwise).
- Fréchet distance (FID-like, Heusel et al. 2017) between Gaussian fits of
  features of the real test images and of the synthetic images. The feature
  extractor is privmed's ``cnn`` trained here on the real training split (no
  downloaded Inception weights, which also do not fit 1-channel 32 px
  images), so values compare generators on one data set and seed only.
- Membership inference on the released images (the generator's view): a
  record's score is minus its distance to the nearest synthetic image of its
  label (Hayes et al. 2019's "distance to the closest record" family, the
  attack that needs only the released data). Members: the training images;
  non-members: held-out real images. Reported at patient level (mean of a
  patient's image scores) beside its null (the same scores with the member
  labels permuted: mean and 95th percentile of the AUC) and a positive
  control (a non-private CGAN trained 800 steps on 8 images, attacked the
  same way against 64 held-out patients).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from privmed.attacks.metrics import mia_metrics, per_patient
from privmed.data.base import ArraySet

TSTR_EPOCHS = 50  # privmed's default training budget (TrainSettings: 50 epochs of the centralised baseline)


def scores(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """AUROC, accuracy, precision, recall and F1 (class 1 positive for two classes, else macro)."""
    import warnings

    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    k = proba.shape[1]
    pred = proba.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        average = "binary" if k == 2 else "macro"
        p, r, f, _ = precision_recall_fscore_support(y_true, pred, average=average, zero_division=0)
        try:
            auc = roc_auc_score(y_true, proba[:, 1]) if k == 2 else roc_auc_score(y_true, proba, multi_class="ovr")
        except ValueError:
            auc = float("nan")
    return {"auroc": float(auc), "accuracy": float(accuracy_score(y_true, pred)), "precision": float(p),
            "recall": float(r), "f1": float(f)}  # fmt: skip


def train_classifier(train: ArraySet, n_classes: int, *, seed: int, epochs: int = TSTR_EPOCHS) -> torch.nn.Module:
    """privmed's default classifier (``cnn``), Adam, ``epochs`` epochs; the epoch released is the one with the
    lowest loss on a held-out 10 % of ``train`` (synthetic for TSTR: no real image chooses it)."""
    import copy

    from privmed.models import build_model
    from privmed.tasks import predict_proba, train_local

    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, len(train) // 10) if len(train) >= 10 else 0
    fit, val = train.subset(order[n_val:]), train.subset(order[:n_val])
    model = build_model("cnn", in_channels=train.images.shape[1], n_classes=n_classes, seed=seed)
    state: dict = {}
    best, best_loss = copy.deepcopy(model.state_dict()), float("inf")
    for epoch in range(epochs):
        train_local(model, fit, task="classification", epochs=1, lr=1e-3, seed=seed + epoch, optimizer_state=state)
        if n_val:
            proba = torch.from_numpy(predict_proba(model, val)).clamp_min(1e-12)
            loss = float(torch.nn.functional.nll_loss(torch.log(proba), torch.from_numpy(val.labels)))
            if loss < best_loss:
                best, best_loss = copy.deepcopy(model.state_dict()), loss
    if n_val:
        model.load_state_dict(best)
    return model


def tstr(
    train: ArraySet,
    test: ArraySet,
    n_classes: int,
    *,
    seed: int,
    epochs: int = TSTR_EPOCHS,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """The classifier (``model`` if already trained on ``train``) and a logistic regression, scored on real ``test``."""
    from sklearn.linear_model import LogisticRegression

    from privmed.tasks import predict_proba

    model = model or train_classifier(train, n_classes, seed=seed, epochs=epochs)
    out = {"cnn": scores(test.labels, predict_proba(model, test))}
    if len(np.unique(train.labels)) < 2:
        out["logreg"] = {"auroc": float("nan")}
        return out
    lr = LogisticRegression(max_iter=500, C=0.1, random_state=seed)
    lr.fit(train.images.reshape(len(train), -1), train.labels)
    proba = np.zeros((len(test), n_classes))
    proba[:, lr.classes_] = lr.predict_proba(test.images.reshape(len(test), -1))
    out["logreg"] = scores(test.labels, proba)
    return out


@torch.no_grad()
def features(model: torch.nn.Module, data: ArraySet) -> np.ndarray:
    """The classifier's pooled penultimate features ([N, F])."""
    model.eval()
    pool = model.head[:2]  # global average pooling and flatten of privmed's cnn
    x = torch.from_numpy(data.images)
    return torch.cat([pool(model.features(x[i : i + 256])) for i in range(0, len(x), 256)]).numpy().astype(np.float64)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) of two feature sets."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ridge = 1e-6 * np.eye(a.shape[1])  # dead ReLU features make the covariances singular (as in the FID reference code)
    ca, cb = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = linalg.sqrtm(ca @ cb)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * np.real(root)))


def nearest_synthetic_distance(records: ArraySet, synthetic: ArraySet) -> np.ndarray:
    """Each record's L2 distance to the closest synthetic image of the same label (inf if none has it)."""
    out = np.full(len(records), np.inf)
    r = torch.from_numpy(records.images.reshape(len(records), -1))
    s = torch.from_numpy(synthetic.images.reshape(len(synthetic), -1))
    for label in np.unique(records.labels):
        mine, theirs = records.labels == label, synthetic.labels == label
        if theirs.any():
            out[mine] = torch.cdist(r[mine], s[theirs]).min(1).values.numpy()
    return out


def membership(
    synthetic: ArraySet, members: ArraySet, non_members: ArraySet, *, seed: int, permutations: int = 200
) -> dict[str, float]:
    """Distance-to-closest-synthetic attack at patient level, with its permutation null."""
    both = ArraySet.concat([members, non_members])
    score = -nearest_synthetic_distance(both, synthetic)
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(non_members), bool)]
    s, m = per_patient(score, is_member, both.patient_ids)
    out = mia_metrics(s, m)
    rng = np.random.default_rng(seed)
    null = [mia_metrics(s, rng.permutation(m))["auc"] for _ in range(permutations)]
    return {"auc": out["auc"], "tpr_at_1pct_fpr": out["tpr_at_1pct_fpr"], "null_auc_mean": float(np.mean(null)),
            "null_auc_95pct": float(np.quantile(null, 0.95)), "patients": int(len(m))}  # fmt: skip


def positive_control(
    train: ArraySet,
    non_members: ArraySet,
    n_classes: int,
    *,
    seed: int,
    images: int = 8,
    steps: int = 800,
    held_out: int = 64,
) -> dict[str, float]:
    """The same attack on a non-private CGAN trained ``steps`` steps (lr 1e-3) on only ``images`` training images,
    against ``held_out`` non-members (300 steps on 16 images at lr 2e-4 did not memorise: AUC 0.54 on the phantom)."""
    from privmed.synthetic.dp_cgan import CGANConfig, train_cgan

    rng = np.random.default_rng(seed)
    few = train.subset(rng.choice(len(train), size=min(images, len(train)), replace=False))
    few = ArraySet(images=few.images, labels=few.labels, patient_ids=np.asarray([f"M{i}" for i in range(len(few))]))
    held = non_members.subset(rng.choice(len(non_members), size=min(held_out, len(non_members)), replace=False))
    held = ArraySet(images=held.images, labels=held.labels, patient_ids=np.asarray([f"N{i}" for i in range(len(held))]))
    cfg = CGANConfig(epsilon=None, steps=steps, batch_size=len(few), seed=seed, width=16, lr=1e-3)
    gan = train_cgan(few, n_classes, cfg)
    out = membership(gan.sample(max(256, 16 * len(few)), seed=seed + 7), few, held, seed=seed)
    return {**out, "training_images": len(few), "steps": steps}
