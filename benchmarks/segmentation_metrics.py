"""Segmentation metrics as the field reports them, per site: lesion-present Dice, overall Dice, HD95.

Trains a segmentation run (default: FedAvg with the tiny ``seg-cnn`` on the
default phantom) and prints, per site and pooled, the Dice over
lesion-present cases (the headline), the overall Dice with empty-empty
counted as 1 (the convention, stated), the share of empty cases, the
false-positive rate on empty cases, and HD95 (MONAI; an empty prediction on
a lesion case scores the image diagonal). Beside them, the all-background
segmenter's scores (the null an honest headline must beat).

Run: PYTHONPATH=. python benchmarks/segmentation_metrics.py [--rounds N] [--model unet]
"""

from __future__ import annotations

import argparse

import numpy as np

from privmed.config import RunConfig
from privmed.engine.session import build_federation
from privmed.protocols.base import TrainSettings
from privmed.run import execute, set_threads
from privmed.tasks import segmentation_metrics

KEYS = ("dice", "dice_overall", "empty_fraction", "empty_false_positive_rate", "hd95", "hd95_empty_prediction")


def line(name: str, m: dict) -> str:
    return f"{name:12} " + "  ".join(f"{k} {m[k]:.3f}" if m.get(k) is not None else f"{k} n/a" for k in KEYS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--model", default="seg-cnn")
    args = ap.parse_args()
    set_threads()
    cfg = RunConfig(protocol="fedavg", model=args.model, task="segmentation", train=TrainSettings(rounds=args.rounds))
    fed = build_federation(cfg.data, cfg.seed)
    result = execute(cfg, fed=fed)
    perf = result.performance
    print(f"FedAvg {args.model}, {args.rounds} rounds, default phantom; test sets per site")
    for site, m in perf["per_site"].items():
        print(line(site, m))
    print(line("pooled", perf["final"]))
    test = fed.pooled("test")
    background = np.zeros((len(test), 2, *test.images.shape[-2:]), dtype=np.float32)
    background[:, 0] = 1
    print(line("null: all bg", segmentation_metrics(test.masks, background)))


if __name__ == "__main__":
    main()
