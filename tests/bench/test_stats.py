"""Mean, 95 % CI and the paired test, checked against a direct SciPy computation and hand values."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from privmed.bench.stats import compare, mean_ci, paired_p, summarise


def test_mean_ci_is_the_student_t_interval():
    x = [0.8, 0.85, 0.9]
    mean, half = mean_ci(x)
    assert mean == pytest.approx(0.85)
    assert half == pytest.approx(sp.t.ppf(0.975, 2) * np.std(x, ddof=1) / math.sqrt(3))
    assert math.isnan(mean_ci([0.7])[1])


def test_paired_test_matches_scipy_and_handles_constant_differences():
    a, b = [0.9, 0.8, 0.85, 0.88], [0.7, 0.75, 0.72, 0.8]
    assert paired_p(a, b) == pytest.approx(sp.ttest_rel(a, b).pvalue)
    assert paired_p([1, 2, 3], [1, 2, 3]) == 1.0 and paired_p([2, 3, 4], [1, 2, 3]) == 0.0
    assert math.isnan(paired_p([1.0], [0.0]))


def run(label, seed, auroc):
    return {"label": label, "seed": seed, "technique": label, "performance": {"final": {"auroc": auroc}}}


def test_summary_and_comparisons_pair_runs_by_seed():
    results = [run("ref", s, 0.9 + 0.01 * s) for s in range(3)] + [run("x", s, 0.8 + 0.01 * s) for s in range(3)]
    rows = {r["label"]: r for r in summarise(results)}
    assert rows["x"]["figures"]["test AUROC"]["mean"] == pytest.approx(0.81) and rows["x"]["seeds"] == [0, 1, 2]
    (c,) = compare(results, ("ref",))
    assert c["row"] == "x" and c["difference"] == pytest.approx(-0.1) and c["significant"]
    noisy = [run("ref", s, 0.9) for s in range(3)] + [run("y", s, v) for s, v in enumerate((0.95, 0.85, 0.91))]
    (c,) = compare(noisy, ("ref",))
    assert not c["significant"]


def audited(label, seed, auroc, mia, *, privacy=None):
    r = run(label, seed, auroc)
    r["config"] = {"protocol": "cwt", "privacy": privacy or {}, "faults": "", "name": label, "seed": seed}
    r["privacy"] = {"leakage": {"MIA AUC": mia, "MIA AUC, null (chance)": 0.5}}
    return r


def test_every_attack_figure_gets_an_interval_and_dp_rows_are_paired_with_their_plain_row():
    mias = (0.70, 0.72, 0.69)
    results = [audited("cwt", s, 0.9, m) for s, m in enumerate(mias)]
    results += [audited("cwt+dp", s, 0.8, 0.5 + 0.01 * s, privacy={"mechanism": "dp-sgd"}) for s in range(3)]
    rows = {r["label"]: r for r in summarise(results)}
    mia = rows["cwt"]["attacks"]["MIA AUC"]
    assert mia["mean"] == pytest.approx(np.mean(mias)) and mia["n"] == 3
    assert mia["ci95"] == pytest.approx(mean_ci(list(mias))[1])
    assert rows["cwt+dp"]["attacks"]["MIA AUC, null (chance)"]["mean"] == 0.5
    found = {(c["row"], c["reference"], c["figure"]): c for c in compare(results, ())}
    dp = found[("cwt+dp", "cwt", "MIA AUC")]
    assert dp["difference"] == pytest.approx(0.51 - np.mean(mias)) and dp["significant"]
    assert found[("cwt+dp", "cwt", "test AUROC")]["difference"] == pytest.approx(-0.1)
    assert not any(c["row"] == "cwt" for c in found.values())  # the plain row has no counterpart


def test_a_segmentation_row_reports_dice_on_lesion_cases_overall_and_hd95():
    finals = [{"dice": 0.6, "dice_overall": 0.7, "hd95": 4.0}, {"dice": 0.5, "dice_overall": 0.75, "hd95": 6.0}]
    results = [{**run("unet", s, None), "performance": {"final": f}} for s, f in enumerate(finals)]
    (row,) = summarise(results)
    figures = {k: (v["mean"], v["n"]) for k, v in row["figures"].items()}
    assert figures == {"Dice": (0.55, 2), "Dice (all cases)": (0.725, 2), "HD95": (5.0, 2)}


def test_a_row_on_other_data_is_not_compared_with_the_reference():
    def on(label, seed, auroc, data):
        return {**run(label, seed, auroc), "config": {"data": data, "privacy": {}, "seed": seed}}

    results = [on("ref", s, 0.9, {"image_size": 32}) for s in range(3)]
    results += [on("same", s, 0.7 + 0.01 * s, {"image_size": 32}) for s in range(3)]
    results += [on("bigger", s, 0.7 + 0.01 * s, {"image_size": 32, "patients_scale": 10}) for s in range(3)]
    assert [c["row"] for c in compare(results, ("ref",))] == ["same"]
