"""Sites summarise, the coordinator sums: the pooled metrics equal those computed on the pooled outputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from privmed import evaluation as ev
from privmed.data.base import ArraySet
from privmed.tasks import metrics_from_proba


def _set(labels, masks=None) -> ArraySet:
    n = len(labels)
    return ArraySet(
        images=np.zeros((n, 1, 4, 4), np.float32),
        labels=np.asarray(labels, np.int64),
        patient_ids=np.arange(n),
        masks=masks,
    )


def _split(proba, labels, cuts):
    """The pooled set cut into sites: each site's summary, summed."""
    parts = np.split(np.arange(len(labels)), cuts)
    return ev.add([ev.summary(proba[p], _set(labels[p]), task="classification") for p in parts])


@pytest.mark.parametrize("k", [2, 3])
def test_summed_site_summaries_give_the_pooled_metrics_and_auroc_within_its_stated_bound(k):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, 600)
    logits = rng.normal(size=(600, k)) + 1.5 * np.eye(k)[labels]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pooled = ev.from_record(ev.to_record(_split(proba, labels, [100, 350])))
    got = ev.metrics_of(pooled, with_loss=True)
    exact = metrics_from_proba(_set(labels), proba, task="classification")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity", "specificity"):
        assert got[key] == pytest.approx(exact[key], abs=1e-12), key
    assert abs(got["auroc"] - exact["auroc"]) <= got["auroc_binning_bound"] + 1e-12
    assert 0 < got["auroc_binning_bound"] < 0.01  # 1,000 bins: well under a point of AUROC here
    assert got["loss"] == pytest.approx(-np.log(proba[np.arange(600), labels]).mean(), rel=1e-9)


def test_binned_auroc_is_exact_when_no_positive_and_negative_share_a_bin_and_undefined_for_one_class():
    labels = np.array([0, 0, 1, 1, 0, 1])
    p1 = np.array([0.05, 0.41, 0.40, 0.93, 0.12, 0.77])
    proba = np.stack([1 - p1, p1], 1)
    got = ev.metrics_of(_split(proba, labels, [3]))
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, p1), abs=1e-12) and got["auroc_binning_bound"] == 0
    one = ev.metrics_of(ev.summary(proba[labels == 1], _set(labels[labels == 1]), task="classification"))
    assert np.isnan(one["auroc"])


def test_segmentation_sums_give_the_pooled_dice_and_hd95():
    rng = np.random.default_rng(1)
    masks = np.zeros((8, 1, 12, 12), np.uint8)
    for i in range(5):
        masks[i, 0, 2 + i : 7 + i, 3:8] = 1
    fg = rng.random((8, 12, 12)) * 0.6 + 0.45 * masks[:, 0]
    proba = np.stack([1 - fg, fg], 1).astype(np.float32)
    data = ArraySet(np.zeros((8, 1, 12, 12), np.float32), np.zeros(8, np.int64), np.arange(8), masks=masks)
    parts = [np.arange(3), np.arange(3, 8)]
    summed = ev.add([ev.summary(proba[p], data.subset(p), task="segmentation") for p in parts])
    got = ev.metrics_of(ev.from_record(ev.to_record(summed)), with_loss=True)
    exact = metrics_from_proba(data, proba, task="segmentation")
    for key, value in exact.items():
        assert got[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key
    picked = np.take_along_axis(proba, masks.astype(np.int64), axis=1)
    assert got["loss"] == pytest.approx(float(-np.log(picked).mean()), rel=1e-5)  # pixel cross-entropy, pooled


def test_a_malformed_summary_is_refused_with_the_reason():
    labels = np.array([0, 1, 1])
    s = ev.summary(np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]), _set(labels), task="classification")
    s["n"] = np.array([5])
    with pytest.raises(ValueError, match="disagree"):
        ev.from_record(ev.to_record(s))
    s["confusion"] = -s["confusion"]
    with pytest.raises(ValueError, match="negative"):
        ev.from_record(ev.to_record(s))


def test_model_selection_compares_rounds_on_the_sites_both_were_measured_on():
    """A site down in one round is left out of the comparison (its loss would shift the pooled figure)."""
    from privmed.engine.result import Evaluation, Monitor

    monitor = Monitor.__new__(Monitor)
    monitor.best = {"round": 1, "loss": 0.5, "sites": {"a": (40.0, 100.0), "b": (90.0, 100.0)}}

    def found(losses):
        total = sum(v[0] for v in losses.values()) / sum(v[1] for v in losses.values())
        return Evaluation(pooled={"loss": total}, per_site={}, missing={}, n=1, losses=losses)

    # without b (the worse site), the pooled loss 0.45 looks better than round 1's 0.65, but on a alone it is worse
    assert not monitor._better(found({"a": (45.0, 100.0)}))
    assert monitor._better(found({"a": (39.0, 100.0), "b": (80.0, 100.0)}))
    assert monitor._better(found({"c": (99.0, 100.0)}))  # nothing in common: the newer round
