"""Evaluation the sites do themselves: sufficient statistics per site, metrics from their sums.

A coordinator holds no site data, so it cannot measure a model on the sites'
validation or test splits. Each site instead answers an ``evaluate`` message
(:data:`EVAL`) with a :func:`summary` of the model's outputs on one of its own
splits: only counts and sums leave the site, never a score of one image.
:func:`metrics_of` turns the sum of the sites' summaries into the same
metrics :func:`privmed.tasks.metrics_from_proba` computes on the pooled split,
so the in-process harness and a deployed coordinator report the same numbers.

What a summary holds:

- classification: the confusion matrix [true, predicted], the sum of the
  cross-entropy and the number of images, and ``hist[t, c, b]``: how many
  images of true class ``t`` gave class ``c`` a probability in bin ``b`` of
  :data:`BINS` equal bins of [0, 1]. Accuracy, balanced accuracy, macro-F1,
  sensitivity and specificity follow exactly from the confusion matrix. AUROC
  (binary, or one-vs-rest macro as scikit-learn's ``roc_auc_score``) follows
  from the histograms, exactly for the binned scores: a positive and a
  negative image whose scores share a bin count as a tie (½). The difference
  from the exact AUROC is therefore at most half the share of positive–negative
  pairs in a common bin, which :func:`metrics_of` reports as
  ``auroc_binning_bound`` (tests/test_evaluation.py checks the bound
  against scikit-learn on the pooled scores).
- segmentation: per-case sums (exact): lesion Dice summed over lesion-present
  cases and over all cases (MONAI's ``ignore_empty=False`` convention), the
  case counts, lesion-free cases with a predicted lesion, HD95 summed over
  lesion-present cases (the diagonal for an empty prediction, as
  :func:`privmed.tasks.segmentation_metrics`), and the pixel cross-entropy sum
  and pixel count.

Written by hand because the statistic is ours (Flower's strategies average
each site's metric by its example count, which is wrong for AUROC); the
per-case segmentation metrics are MONAI's, through :func:`privmed.tasks.segmentation_metrics`'s code.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from privmed.data.base import ArraySet
from privmed.tasks import predict_proba, targets

BINS = 1000  # equal bins of a class probability in [0, 1] for the pooled ROC
EVAL = "privmed-eval"  # the config record of the harness's evaluate message: which split to summarise
SUMMARY = "privmed-summary"  # the reply's array record
SPLITS = ("val", "test")
_SEG_KEYS = ("n", "present", "dice_present", "dice_all", "empty_fp", "hd95", "hd95_empty", "loss", "pixels")


def summary(proba: np.ndarray, data: ArraySet, *, task: str) -> dict[str, np.ndarray]:
    """The sufficient statistics of one site's outputs ``proba`` on ``data`` (see the module docstring)."""
    y = targets(data, task) if len(data) else np.zeros((0,), np.int64)
    nll = _nll_sum(proba, y) if len(data) else 0.0
    if task == "segmentation":
        return _segmentation_summary(proba, data.masks, nll)
    k = proba.shape[1] if proba.ndim == 2 else 0
    return _classification_summary(proba, y, k, nll)


def _nll_sum(proba: np.ndarray, y: np.ndarray) -> float:
    logp = torch.log(torch.from_numpy(proba).clamp_min(1e-12))
    return float(torch.nn.functional.nll_loss(logp, torch.from_numpy(y), reduction="sum"))


def _classification_summary(proba: np.ndarray, y: np.ndarray, k: int, nll: float) -> dict[str, np.ndarray]:
    hist = np.zeros((k, k, BINS), np.int64)
    conf = np.zeros((k, k), np.int64)
    if len(y):
        # a diverged model's NaN outputs fall in the lowest bin (its loss is NaN, which is what selection sees)
        b = np.clip(np.nan_to_num(proba * BINS, nan=0.0), 0, BINS - 1).astype(np.int64)  # [N, K]
        for c in range(k):
            np.add.at(hist[:, c, :], (y, b[:, c]), 1)
        np.add.at(conf, (y, proba.argmax(1)), 1)
    return {"hist": hist, "confusion": conf, "loss": np.array([nll]), "n": np.array([len(y)], np.int64)}


def _segmentation_summary(proba: np.ndarray, masks: np.ndarray | None, nll: float) -> dict[str, np.ndarray]:
    from privmed.tasks import segmentation_cases

    out = dict.fromkeys(_SEG_KEYS, 0.0)
    if masks is not None and len(masks):
        cases = segmentation_cases(masks, proba)
        present, pred_any, dice = cases["present"], cases["pred_any"], cases["dice"]
        out.update(
            n=float(len(dice)),
            present=float(present.sum()),
            dice_present=float(dice[present].sum()),
            dice_all=float(dice.sum()),
            empty_fp=float((pred_any & ~present).sum()),
            hd95=float(cases["hd95"].sum()),
            hd95_empty=float((present & ~pred_any).sum()),
            loss=nll,
            pixels=float(masks[:, 0].size),
        )
    return {"seg": np.array([out[key] for key in _SEG_KEYS], np.float64)}


def add(summaries: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The pooled summary: the element-wise sum of the sites' (None if there is none)."""
    if not summaries:
        return None
    return {key: sum(s[key] for s in summaries) for key in summaries[0]}


def loss_parts(s: dict[str, np.ndarray]) -> tuple[float, float]:
    """The loss sum and what it is summed over (images; segmentation: pixels): pooled loss = sum / count."""
    if "seg" in s:
        v = dict(zip(_SEG_KEYS, s["seg"].tolist()))
        return v["loss"], v["pixels"]
    return float(s["loss"][0]), float(s["n"][0])


def count(s: dict[str, np.ndarray]) -> int:
    """How many images (cases) a summary covers."""
    return int(s["n"][0]) if "n" in s else int(s["seg"][0])


def metrics_of(s: dict[str, np.ndarray], *, with_loss: bool = False) -> dict[str, float]:
    """The task's metrics from a (pooled) summary, as :func:`privmed.tasks.metrics_from_proba` names them."""
    if "seg" in s:
        out = _segmentation_metrics(dict(zip(_SEG_KEYS, s["seg"].tolist())))
        if with_loss:
            out["loss"] = out.pop("_loss")
        else:
            out.pop("_loss")
        return out
    conf, hist = s["confusion"].astype(np.float64), s["hist"]
    n = conf.sum()
    support, predicted, diag = conf.sum(1), conf.sum(0), np.diag(conf)
    recall = diag[support > 0] / support[support > 0]
    f1 = np.where(support + predicted > 0, 2 * diag / np.maximum(support + predicted, 1), 0.0)
    pos_true = support[1:].sum()
    true_pos = conf[1:, 1:].sum()
    out = {
        "accuracy": float(diag.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall.mean()) if len(recall) else float("nan"),
        "macro_f1": float(f1.mean()) if n else float("nan"),
    }
    auroc, bound = _auroc(hist)
    out["auroc"], out["auroc_binning_bound"] = auroc, bound
    out["sensitivity"] = float(true_pos / max(pos_true, 1))
    out["specificity"] = float((conf[0, 0]) / max(support[0], 1))
    if with_loss:
        out["loss"] = float(s["loss"][0] / n) if n else float("nan")
    return out


def _auroc(hist: np.ndarray) -> tuple[float, float]:
    """AUROC from the class histograms (binary: class 1's score; else one-vs-rest macro) and its binning bound."""
    k = hist.shape[0]
    classes = [1] if k == 2 else list(range(k))
    aucs, bounds = [], []
    for c in classes:
        pos = hist[c, c].astype(np.float64)
        neg = hist[:, c].sum(0).astype(np.float64) - pos
        p, q = pos.sum(), neg.sum()
        if not p or not q:
            return float("nan"), float("nan")  # one class only: AUROC is undefined (as scikit-learn's ValueError)
        below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])  # negatives in lower bins
        same = float((pos * neg).sum())
        aucs.append(float(((pos * below).sum() + 0.5 * same) / (p * q)))
        bounds.append(0.5 * same / (p * q))
    return float(np.mean(aucs)), float(np.mean(bounds))


def _segmentation_metrics(v: dict[str, float]) -> dict[str, float]:
    nan = float("nan")
    n, present = v["n"], v["present"]
    empty = n - present
    return {
        "dice": v["dice_present"] / present if present else nan,
        "dice_overall": v["dice_all"] / n if n else nan,
        "empty_fraction": empty / n if n else nan,
        "empty_false_positive_rate": v["empty_fp"] / empty if empty else nan,
        "hd95": v["hd95"] / present if present else nan,
        "hd95_empty_prediction": v["hd95_empty"] / present if present else nan,
        "_loss": v["loss"] / v["pixels"] if v["pixels"] else nan,
    }


# ----------------------------------------------------------------------------- on the wire


def to_record(s: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in s.items()})


def from_record(rec: ArrayRecord) -> dict[str, np.ndarray]:
    """A site's summary as received; a ValueError names what does not fit (the coordinator drops that site)."""
    s = {key: np.asarray(a.numpy()) for key, a in rec.items()}
    if set(s) == {"seg"}:
        if s["seg"].shape != (len(_SEG_KEYS),) or (s["seg"] < 0).any():
            raise ValueError("segmentation summary malformed (its shape, or negative sums)")
        return s
    if set(s) != {"hist", "confusion", "loss", "n"}:
        raise ValueError(f"summary holds {sorted(s)}, expected hist, confusion, loss, n")
    k = s["confusion"].shape[0]
    if s["hist"].shape != (k, k, BINS) or s["confusion"].shape != (k, k):
        raise ValueError(f"summary shapes {s['hist'].shape} / {s['confusion'].shape} do not fit {k} classes")
    if (s["hist"] < 0).any() or (s["confusion"] < 0).any() or (s["loss"] < 0).any():
        raise ValueError("summary holds negative counts or a negative loss")
    if int(s["hist"][:, 0].sum()) != int(s["n"][0]) or int(s["confusion"].sum()) != int(s["n"][0]):
        raise ValueError("summary counts disagree with its number of images")
    return s


def site_summary(model_outputs: np.ndarray, data: ArraySet, task: str) -> ArrayRecord:
    """What a site sends back: the summary of its outputs on ``data``, on the wire."""
    return to_record(summary(model_outputs, data, task=task))


def predict_members(models: list[torch.nn.Module], data: ArraySet) -> np.ndarray:
    """The mean probabilities of one model or an ensemble's members on ``data`` (a site's own split)."""
    out = None
    for model in models:
        p = predict_proba(model, data)
        out = p if out is None else out + p
    return out / len(models)


def request(predictor: ArrayRecord | list[ArrayRecord], split: str) -> dict:
    """The content of the harness's evaluate message: the model (an ensemble: every member) and the split."""
    from flwr.app import ConfigRecord

    if split not in SPLITS:
        raise ValueError(f"split {split!r}; valid: {', '.join(SPLITS)}")
    members = predictor if isinstance(predictor, list) else [predictor]
    content: dict = {f"arrays-{i}" if i else "arrays": m for i, m in enumerate(members)}
    content[EVAL] = ConfigRecord({"split": split, "members": len(members)})
    return content


def members_of(content) -> list[ArrayRecord]:
    """The model(s) an evaluate request carries (see :func:`request`)."""
    n = int(content[EVAL]["members"])
    return [content[f"arrays-{i}" if i else "arrays"] for i in range(n)]
