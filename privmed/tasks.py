"""Classification and segmentation behind one interface: loss, prediction, metrics.

The trainer (:func:`train_local`) knows nothing about the model; it takes an
:class:`~privmed.data.ArraySet`, a task name and hyper-parameters, and every
random draw comes from a generator seeded by the caller.
Metrics follow the field: scikit-learn for classification, MONAI's Dice for
segmentation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from privmed.data.base import ArraySet
from privmed.errors import PrivmedError, unknown_name

TASKS = ("classification", "segmentation")


class DivergedError(PrivmedError):
    """Training produced a non-finite loss."""


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise unknown_name("task", task, TASKS)


def targets(data: ArraySet, task: str) -> np.ndarray:
    """What the network is trained to output: labels, or lesion masks."""
    if task == "segmentation":
        if data.masks is None:
            raise PrivmedError("segmentation needs lesion masks; this data set has none (use --task classification)")
        return data.masks[:, 0].astype(np.int64)
    return data.labels


def loss_fn(task: str) -> nn.Module:
    _check_task(task)
    if task == "segmentation":
        from monai.losses import DiceCELoss

        # Dice on the lesion channel only, over the whole batch (nnU-Net's batch Dice): with the background channel
        # in the Dice term and Dice per image, half the phantom's images have no lesion and an empty prediction
        # scores well, and FedAvg's U-Net collapsed towards empty masks on 2 of 5 seeds (lesion Dice 0.04; mean
        # 0.29 over seeds 0-4, review row, 50 rounds); with this loss 0.57-0.63 on every seed (mean 0.60).
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    return nn.CrossEntropyLoss()


def batch_loss(criterion: nn.Module, out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    return criterion(out, y.unsqueeze(1) if task == "segmentation" else y)


def batches(
    data: ArraySet, task: str, batch_size: int, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches as tensors; shuffled when a generator is given."""
    x_all = torch.from_numpy(data.images)
    y_all = torch.from_numpy(targets(data, task))
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield x_all[idx], y_all[idx]


def train_local(
    model: nn.Module,
    data: ArraySet,
    *,
    task: str,
    epochs: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    optimizer_state: dict | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``epochs`` epochs with Adam; return loss and example counts.

    ``optimizer_state``: a dict the caller keeps between calls (a site's own memory): Adam's moments and step
    count are loaded from it and saved back into it, so a site's visits continue one optimisation instead of
    restarting Adam (whose first steps are sign steps of size lr) at every visit.
    """
    _check_task(task)
    if len(data) == 0:
        raise PrivmedError("cannot train on an empty data set (a site has no training images)")
    gen = torch.Generator().manual_seed(seed)
    criterion = loss_fn(task)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if optimizer_state:
        opt.load_state_dict(optimizer_state["adam"])
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        for x, y in batches(data, task, batch_size, gen):
            opt.zero_grad(set_to_none=True)
            loss = batch_loss(criterion, model(x), y, task)
            if not torch.isfinite(loss):
                raise DivergedError("training diverged (non-finite loss); lower the learning rate (--lr)")
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            count += len(x)
    if optimizer_state is not None:
        optimizer_state["adam"] = opt.state_dict()
    return {"train_loss": total / max(count, 1), "num-examples": float(len(data))}


@torch.no_grad()
def predict_proba(model: nn.Module, data: ArraySet, *, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs, [N, K] (classification) or [N, K, H, W] (segmentation)."""
    model.eval()
    outs = [
        torch.softmax(model(torch.from_numpy(data.images[i : i + batch_size])), dim=1)
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(outs).numpy()


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, AUROC, sensitivity, specificity.

    Sensitivity/specificity treat class 0 as "no lesion" and any other class as
    positive; AUROC is one-vs-rest macro for more than two classes, NaN when the
    test set holds a single class.
    """
    import warnings

    k = proba.shape[1]
    pred = proba.argmax(1)
    with warnings.catch_warnings():  # a one-class test split: AUROC is NaN (reported as n/a), not a warning
        warnings.simplefilter("ignore")
        return _classification_metrics(y_true, proba, pred, k)


def _classification_metrics(y_true: np.ndarray, proba: np.ndarray, pred: np.ndarray, k: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    out = {
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "macro_f1": float(f1_score(y_true, pred, average="macro", labels=list(range(k)), zero_division=0)),
    }
    try:
        out["auroc"] = float(
            roc_auc_score(y_true, proba[:, 1])
            if k == 2
            else roc_auc_score(y_true, proba, multi_class="ovr", labels=list(range(k)))
        )
    except ValueError:
        out["auroc"] = float("nan")
    pos_true, pos_pred = y_true > 0, pred > 0
    out["sensitivity"] = float((pos_pred & pos_true).sum() / max(pos_true.sum(), 1))
    out["specificity"] = float((~pos_pred & ~pos_true).sum() / max((~pos_true).sum(), 1))
    return out


def segmentation_metrics(masks: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Lesion Dice and HD95 as the field reports them (Maier-Hein et al. 2024, "Metrics reloaded"; MONAI's metrics).

    - ``dice``: mean Dice of the lesion over the **lesion-present** cases only
      (where Dice is defined); NaN if no case has a lesion.
    - ``dice_overall``: mean over all cases with the stated convention that an
      empty prediction of an empty mask scores 1 and any lesion predicted in an
      empty mask scores 0 (MONAI ``ignore_empty=False``); it rewards an
      all-background segmenter by the share of empty cases (``empty_fraction``),
      which is why it is not the headline.
    - ``empty_false_positive_rate``: fraction of lesion-free cases where any
      lesion pixel is predicted (what ``dice`` cannot see).
    - ``hd95``: mean 95th-percentile Hausdorff distance (pixels, MONAI
      ``compute_hausdorff_distance(percentile=95)``) over lesion-present cases;
      a case with an empty prediction scores the image diagonal (the worst
      distance, the BraTS convention), counted in ``hd95_empty_prediction``.

    Volumes (masks [N, 1, D, H, W]) are scored in 3-D: Dice over each
    volume's voxels, HD95 between surfaces in 3-D (voxels), the worst
    distance the volume's space diagonal.
    """
    cases = segmentation_cases(masks, proba)
    present, pred_any, dice_all, hd = cases["present"], cases["pred_any"], cases["dice"], cases["hd95"]
    nan = float("nan")
    return {
        "dice": float(dice_all[present].mean()) if present.any() else nan,
        "dice_overall": float(dice_all.mean()) if len(dice_all) else nan,
        "empty_fraction": float((~present).mean()) if len(present) else nan,
        "empty_false_positive_rate": float(pred_any[~present].mean()) if (~present).any() else nan,
        "hd95": float(hd.mean()) if present.any() else nan,
        "hd95_empty_prediction": float((~pred_any[present]).mean()) if present.any() else nan,
    }


def segmentation_cases(masks: np.ndarray, proba: np.ndarray) -> dict[str, np.ndarray]:
    """Per case: lesion present, lesion predicted, Dice (MONAI, ``ignore_empty=False``) and, for lesion-present
    cases, HD95 (the diagonal for an empty prediction); :func:`segmentation_metrics` averages them and
    :mod:`privmed.evaluation` sums them at each site."""
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    pred = torch.from_numpy(proba.argmax(1) > 0).unsqueeze(1).float()
    true = torch.from_numpy(masks > 0).float()
    present = true.flatten(1).sum(1) > 0
    pred_any = pred.flatten(1).sum(1) > 0
    dice_all = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred, true)[:, 0]
    hd = torch.zeros((0,), dtype=torch.float64)
    if present.any():
        import warnings

        diagonal = float(np.sqrt(sum(n**2 for n in masks.shape[2:])))  # the image's (volume's) diagonal
        empty = ~pred_any[present]
        hd = torch.full((int(present.sum()),), diagonal, dtype=torch.float64)
        both = present & pred_any  # HD95 is defined where both the mask and the prediction hold a lesion
        if both.any():
            with warnings.catch_warnings():  # MONAI 1.5's own deprecation notice inside compute_hausdorff_distance
                warnings.simplefilter("ignore", FutureWarning)
                hd[~empty] = compute_hausdorff_distance(pred[both], true[both], percentile=95)[:, 0].double()
    return {
        "present": present.numpy(),
        "pred_any": pred_any.numpy(),
        "dice": dice_all.double().numpy(),
        "hd95": hd.numpy(),
    }


def metrics_from_proba(data: ArraySet, proba: np.ndarray, *, task: str) -> dict[str, float]:
    _check_task(task)
    if task == "segmentation":
        return segmentation_metrics(data.masks, proba)
    return classification_metrics(data.labels, proba)


def evaluate(model: nn.Module, data: ArraySet, *, task: str) -> dict[str, float]:
    """The task's metrics of ``model`` on ``data``, plus the mean loss."""
    _check_task(task)
    proba = predict_proba(model, data)
    out = metrics_from_proba(data, proba, task=task)
    with torch.no_grad():
        logits = torch.log(torch.from_numpy(proba).clamp_min(1e-12))
        y = torch.from_numpy(targets(data, task))
        out["loss"] = float(nn.functional.nll_loss(logits, y))
    return out


PRIMARY_METRIC = {"classification": "accuracy", "segmentation": "dice"}
