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
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy import stats

from privmed.data.calibration import calibrate
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        t = time.time()
        row = calibrate(phantom_federation(PhantomConfig(seed=seed), split="natural", seed=seed), seed=seed)
        row.update(seed=seed, seconds=time.time() - t)
        rows.append(row)
        print(f"seed {seed}: {row['seconds']:.0f} s", flush=True)
    print("| data seed | " + " | ".join(h for _, h in COLUMNS) + " |")
    print("|" + " --- |" * (len(COLUMNS) + 1))
    for row in rows:
        print(f"| {row['seed']} | " + " | ".join(f"{row[k]:.3f}" for k, _ in COLUMNS) + " |")
    print(
        "| mean ± 95 % CI | "
        + " | ".join(f"{np.mean([r[k] for r in rows]):.3f} ± {ci95([r[k] for r in rows]):.3f}" for k, _ in COLUMNS)
        + " |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
