"""Numbers over seeds: mean and 95 % confidence interval per bench row, and which differences are significant.

Every row of a suite runs once per seed (the seed draws the phantom cohort,
the initialisation and the shuffling; DP noise is secret and differs anyway).
A row's figure is the mean over its seeds with a Student-t 95 % interval;
two rows are compared paired by seed (same data, same initialisation), with
a two-sided paired t-test. With 3 seeds the test has little power: a
difference it does not flag is "not shown", not "absent".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

ALPHA = 0.05
# the rows every other row is compared with, paired over seeds: the pooled-data upper bound and plain FedAvg
REFERENCES = ("centralised", "fedavg")

Getter = Callable[[dict[str, Any]], float | None]


def _get(*path: str) -> Getter:
    def get(r: dict[str, Any]) -> float | None:
        v: Any = r
        for key in path:
            if not isinstance(v, dict) or key not in v:
                return None
            v = v[key]
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return get


def _per_site_round_kb(r: dict[str, Any]) -> float | None:
    v = _get("communication", "bytes_per_site_per_round")(r)
    return None if v is None else v / 1000


# (column, unit or baseline, getter): the summary table's figures
FIGURES: tuple[tuple[str, str, Getter], ...] = (
    ("test AUROC", "0.5 = chance", _get("performance", "final", "auroc")),
    ("balanced accuracy", "0.5 = chance", _get("performance", "final", "balanced_accuracy")),
    ("Dice", "lesion-present cases", _get("performance", "final", "dice")),
    ("Dice (all cases)", "empty mask predicted empty = 1", _get("performance", "final", "dice_overall")),
    ("HD95", "pixels, lesion-present cases", _get("performance", "final", "hd95")),
    ("kB/site/round", "kB", _per_site_round_kb),
    ("wall", "s", _get("runtime", "wall_seconds")),
    ("released round", "of the budget", _get("performance", "selection", "round")),
    ("ε", "", _get("privacy", "epsilon")),
    ("MIA AUC", "0.5 = chance", _get("privacy", "leakage", "MIA AUC")),
    ("inversion PSNR", "dB", _get("privacy", "leakage", "inversion PSNR dB")),
    ("flat-guess PSNR", "dB, inversion null", _get("privacy", "leakage", "inversion PSNR dB, null (flat guess)")),
    ("inversion control", "dB, DLG on LeNet", _get("privacy", "leakage", "inversion PSNR dB, positive control")),
    (
        "re-identification top-1",
        "fresh attacker on encodings",
        _get("privacy", "leakage", "re-identification top-1 (fresh attacker, encodings)"),
    ),
    (
        "re-identification control",
        "top-1 on raw images",
        _get("privacy", "leakage", "re-identification top-1, positive control (raw images)"),
    ),
    ("re-identification null", "top-1 by chance", _get("privacy", "leakage", "re-identification top-1, null (chance)")),
    (
        "re-id verification AUC",
        "0.5 = chance",
        _get("privacy", "leakage", "re-identification verification AUC (encodings)"),
    ),
    ("activation inversion PSNR", "dB, decoder", _get("privacy", "leakage", "activation inversion PSNR dB (decoder)")),
    ("white-box inversion PSNR", "dB", _get("privacy", "leakage", "activation inversion PSNR dB (white box)")),
    ("dCor(input, activations)", "", _get("privacy", "leakage", "dCor(input, activations)")),
    ("label leakage AUC", "0.5 = chance", _get("privacy", "leakage", "label leakage AUC (norm attack)")),
    ("PGD accuracy ε=8/255", "", _get("security", "attacks", "PGD acc ε=8/255")),
    ("backdoor success", "", _get("security", "attacks", "backdoor success")),
)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t interval (NaN half-width with one value)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def paired_p(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test p-value (NaN with fewer than two pairs; 1.0 for identical pairs)."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.allclose(d, d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def by_label(results: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """label -> seed -> result, in suite order."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        out.setdefault(r["label"], {})[int(r["seed"])] = r
    return out


def _attack_getters(runs: dict[int, dict[str, Any]]) -> list[tuple[str, Getter]]:
    """Every number the audit reported under ``privacy.leakage`` or ``security.attacks`` in any of the runs."""
    names: dict[tuple[str, str, str], None] = {}
    for r in runs.values():
        for section, key in (("privacy", "leakage"), ("security", "attacks")):
            block = r.get(section, {}).get(key)
            if isinstance(block, dict):
                names.update({(section, key, n): None for n in block})
    return [(name, _get(*path, name)) for *path, name in names]


def _figure(runs: dict[int, dict[str, Any]], get: Getter) -> dict[str, Any] | None:
    values = [v for v in (get(r) for r in runs.values()) if v is not None and math.isfinite(v)]
    if not values:
        return None
    mean, half = mean_ci(values)
    return {"mean": mean, "ci95": half, "n": len(values)}


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: each figure's mean, CI half-width and seed count (figures a row does not have are left out).

    ``figures`` are the summary table's columns (:data:`FIGURES`); ``attacks`` is every leakage and security
    number the audit reported (baselines and positive controls included), each with its interval over seeds.
    """
    rows = []
    for label, runs in by_label(results).items():
        figures = {name: {**f, "unit": unit} for name, unit, get in FIGURES if (f := _figure(runs, get)) is not None}
        attacks = {name: f for name, get in _attack_getters(runs) if (f := _figure(runs, get)) is not None}
        first = next(iter(runs.values()))
        rows.append(
            {
                "label": label,
                "technique": first["technique"],
                "seeds": sorted(runs),
                "figures": figures,
                "attacks": attacks,
            }
        )
    return rows


def _paired(
    runs: dict[int, dict[str, Any]], ref_runs: dict[int, dict[str, Any]], get: Getter
) -> tuple[float, float, float, int] | None:
    """Mean difference, its CI half-width, the paired p-value and the number of pairs (None under 2 pairs)."""
    pairs = [(get(runs[s]), get(ref_runs[s])) for s in runs if s in ref_runs]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2:
        return None
    diff, half = mean_ci([x - y for x, y in pairs])
    return diff, half, paired_p([x for x, _ in pairs], [y for _, y in pairs]), len(pairs)


def _comparison(row: str, ref: str, figure: str, paired: tuple[float, float, float, int]) -> dict[str, Any]:
    diff, half, p, n = paired
    return {
        "row": row,
        "reference": ref,
        "figure": figure,
        "difference": diff,
        "ci95": half,
        "p": p,
        "significant": bool(p < ALPHA),
        "pairs": n,
    }


def compare(results: list[dict[str, Any]], references: tuple[str, ...], figure: str = "test AUROC") -> list[dict]:
    """Every row against each reference row on ``figure``, paired by seed: mean difference, CI, p, significant;
    then every row with a privacy mechanism against the same row without it (:func:`counterparts`) on utility and
    leakage. (A row with injected faults is paired with its fault-free row by :func:`fault_effects`.)

    A row is compared with a reference only on the same data (``config.data``): the DP rows on ten times the
    patients, or the crossover sweep on its own small images, have other training and test images, so their
    difference to the default centralised row would measure the data, not the technique (the DP rows have their
    own non-DP reference through :func:`counterparts`)."""
    get = next(g for name, _, g in FIGURES if name == figure)
    rows = by_label(results)

    def data(label: str) -> Any:
        return next(iter(rows[label].values())).get("config", {}).get("data")

    out = [
        _comparison(label, ref, figure, paired)
        for ref in references
        if ref in rows
        for label, runs in rows.items()
        if label != ref and data(label) == data(ref) and (paired := _paired(runs, rows[ref], get)) is not None
    ]
    getters = {name: g for name, _, g in FIGURES}
    for label, ref in counterparts(results).items():
        for name in COUNTERPART_FIGURES:
            if (paired := _paired(rows[label], rows[ref], getters[name])) is not None:
                out.append(_comparison(label, ref, name, paired))
    return out


# what a mechanism costs and what it protects: utility, and the leakage the audit measured
COUNTERPART_FIGURES = ("test AUROC", "MIA AUC", "inversion PSNR")


def counterparts(results: list[dict[str, Any]]) -> dict[str, str]:
    """label -> the label of the same configuration without its privacy mechanism, where the suite has it.

    A DP row is compared with its non-DP run, paired by seed: the report then says whether DP measurably moved
    leakage towards its null, and what it cost.
    """

    def key(r: dict[str, Any]) -> str:
        c = {k: v for k, v in r.get("config", {}).items() if k not in ("privacy", "faults", "name", "seed")}
        return repr(sorted(c.items()))

    plain: dict[str, str] = {}
    for r in results:
        c = r.get("config", {})
        if not c.get("privacy") and not c.get("faults"):
            plain.setdefault(key(r), r["label"])
    out = {}
    for r in results:
        c = r.get("config", {})
        if c.get("privacy") and not c.get("faults") and plain.get(key(r)) not in (None, r["label"]):
            out[r["label"]] = plain[key(r)]
    return out


def without_faults(config: dict[str, Any], *, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """A row's config but its faults (and name, and ``ignore``): what its fault-free row shares with it."""
    return {k: v for k, v in config.items() if k not in ("faults", "name", *ignore)}


def fault_effects(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with injected faults against its fault-free row, paired by seed: faults injected, survived and
    rounds lost per run, and the change of the primary metric (mean ± 95 % CI, paired t-test)."""
    rows = by_label(results)
    out = []
    for label, runs in rows.items():
        first = next(iter(runs.values()))
        if not first["config"].get("faults"):
            continue
        key = without_faults(first["config"], ignore=("seed",))
        plain = {other: next(iter(o.values()))["config"] for other, o in rows.items()}
        ref = next(
            (o for o, c in plain.items() if not c.get("faults") and without_faults(c, ignore=("seed",)) == key), None
        )
        rel = [r["reliability"] for r in runs.values()]
        entry: dict[str, Any] = {"row": label, "fault_free": ref, "faults": first["config"]["faults"], "runs": len(rel)}
        for name, get in (
            ("faults injected", lambda x: len(x.get("faults_injected") or [])),
            ("survived", lambda x: x.get("faults_survived", 0)),
            ("rounds lost", lambda x: len(x.get("rounds_lost", []))),
        ):
            mean, half = mean_ci([float(get(x)) for x in rel])
            entry[name] = {"mean": mean, "ci95": half}
        if ref is not None:
            metric = first["performance"]["metric"]
            pairs = [
                (runs[s]["performance"]["final"].get(metric), rows[ref][s]["performance"]["final"].get(metric))
                for s in runs
                if s in rows[ref]
            ]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if pairs:
                diff, half = mean_ci([a - b for a, b in pairs])
                p = paired_p([a for a, _ in pairs], [b for _, b in pairs])
                entry["change"] = {"metric": metric, "mean": diff, "ci95": half, "p": p, "pairs": len(pairs)}
        out.append(entry)
    return out
