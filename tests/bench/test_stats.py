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
