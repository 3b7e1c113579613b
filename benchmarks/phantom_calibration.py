"""Phantom v2's calibration table: how hard the default phantom is, over several data seeds.

For each data seed (the model seed is the same number): the default phantom
(4 sites, natural split, held-out test patients, 1,120 pooled test images)
and the figures of ``privmed.data.calibration`` — simple baselines' test
AUROC (logistic regression on a 32-bin histogram + percentiles, on raw pixels;
the image maximum alone, v1's failure mode), the default CNN trained
centrally to a validation plateau (AUROC, balanced accuracy), the two
smallest sites trained alone (balanced accuracy on the pooled test set), and
the site-0 and site-1 models (each trained alone) on their own scanner's test
patients vs the other scanners' (mean drop over the two).
Last row: mean and 95 % CI (t) over seeds. Targets (issue 11): baselines
≤ 0.70, centralised AUROC ≥ 0.90, each small site ≥ 8 points of balanced
accuracy below centralised, cross-scanner drop ≥ 5 points.

    PYTHONPATH=. python benchmarks/phantom_calibration.py [--seeds 0 1 2 3 4] [--json out.json]

About 1 minute per seed on one core.

``--volume``: the 3-D phantom (``phantom:v2?volume=1``, one 32³ volume per
patient visit, the default cohort: 128 training volumes, 280 held-out test
volumes), the 3-D ``cnn`` with ``calibration.VOLUME_RECIPE``, no
cross-scanner columns (for time). Targets (README, "3-D phantom"): baselines
≤ 0.70, centralised AUROC ≥ 0.85, the small sites clearly below central.
Seeds can run as separate processes (``--seeds 1 --json s1.json``) and be
tabled together with ``--table s0.json s1.json ...``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy import stats

from privmed.data.calibration import VOLUME_RECIPE, baselines, calibrate, centralised, site_alone
from privmed.data.phantom import PhantomConfig, phantom_federation

COLUMNS = [  # (key, header)
    ("baseline_histogram_logreg", "hist LR"),
    ("baseline_pixels_logreg", "pixel LR"),
    ("baseline_max_alone", "max"),
    ("central_auroc", "central AUROC"),
    ("central_bacc", "central bacc"),
    ("smallest1_bacc", "site-3 bacc"),
    ("smallest2_bacc", "site-2 bacc"),
    ("cross_site0_own", "site-0 own"),
    ("cross_site0_others", "site-0 others"),
    ("cross_site1_own", "site-1 own"),
    ("cross_site1_others", "site-1 others"),
    ("cross_drop", "mean drop"),
]


def ci95(values: list[float]) -> float:
    return (
        float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
        if len(values) > 1
        else float("nan")
    )


VOLUME_COLUMNS = [
    ("baseline_histogram_logreg", "hist LR"),
    ("baseline_pixels_logreg", "voxel LR"),
    ("baseline_max_alone", "max"),
    ("central_auroc", "central AUROC"),
    ("central_bacc", "central bacc"),
    ("smallest1_auroc", "site-3 AUROC"),
    ("smallest1_bacc", "site-3 bacc"),
    ("smallest2_auroc", "site-2 AUROC"),
    ("smallest2_bacc", "site-2 bacc"),
]


def volume_row(seed: int) -> dict[str, float]:
    """One seed's row of the 3-D calibration, printing each figure as it comes (a seed takes minutes)."""
    start = time.time()
    fed = phantom_federation(PhantomConfig(seed=seed, volume=True, images_per_patient=1), split="natural", seed=seed)
    row = {f"baseline_{k}": v for k, v in baselines(fed).items()}
    print(f"seed {seed}: baselines {row} ({time.time() - start:.0f} s)", flush=True)
    central = centralised(fed, seed=seed, recipe=VOLUME_RECIPE)
    row.update(central_auroc=central.auroc, central_bacc=central.balanced_accuracy)
    print(f"seed {seed}: central {central} ({time.time() - start:.0f} s)", flush=True)
    sizes = [len(s.train) for s in fed.sites]
    for rank, site in enumerate(sorted(range(len(sizes)), key=lambda s: sizes[s])[:2]):
        alone = site_alone(fed, site, seed=seed, recipe=VOLUME_RECIPE)
        row.update({f"smallest{rank + 1}_auroc": alone.auroc, f"smallest{rank + 1}_bacc": alone.balanced_accuracy})
        print(f"seed {seed}: site {site} alone {alone} ({time.time() - start:.0f} s)", flush=True)
    return row


def table(rows: list[dict[str, float]], columns: list[tuple[str, str]]) -> None:
    print("| data seed | " + " | ".join(h for _, h in columns) + " |")
    print("|" + " --- |" * (len(columns) + 1))
    for row in rows:
        print(f"| {row['seed']} | " + " | ".join(f"{row[k]:.3f}" for k, _ in columns) + " |")
    print(
        "| mean ± 95 % CI | "
        + " | ".join(f"{np.mean([r[k] for r in rows]):.3f} ± {ci95([r[k] for r in rows]):.3f}" for k, _ in columns)
        + " |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--volume", action="store_true", help="the 3-D phantom (32³ volumes)")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="only print the table of rows saved by --json")
    args = ap.parse_args()
    columns = VOLUME_COLUMNS if args.volume else COLUMNS
    if args.table:
        table([r for path in args.table for r in json.load(open(path))], columns)
        return
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        t = time.time()
        if args.volume:
            row = volume_row(seed)
        else:
            row = calibrate(phantom_federation(PhantomConfig(seed=seed), split="natural", seed=seed), seed=seed)
        row.update(seed=seed, seconds=time.time() - t, cpu_seconds=time.process_time())
        rows.append(row)
        print(f"seed {seed}: {row['seconds']:.0f} s", flush=True)
    table(rows, columns)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
