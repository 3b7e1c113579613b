"""DSSGD evaluated as Shokri & Shmatikov (CCS 2015) do: each participant's own model, and accuracy vs θu.

The paper's figures score the participants' local models (their Fig. 6-8),
not the server's parameter vector. Here every participant's latest local
model (read at the site through ``dssgd.watch_local_models``, never by the
coordinator) and the global vector are scored on the pooled test set, for
θu in {0.01, 0.1, 1}, without DP and with the SVT (γ and ε per upload as
set below). Prints mean and range over the participants beside the global
vector, one line per setting.

Run: PYTHONPATH=. python benchmarks/dssgd_participants.py [--rounds N] [--image-size S]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from privmed.config import DataConfig, RunConfig
from privmed.engine.result import evaluate_predictor
from privmed.engine.session import build_federation, model_spec
from privmed.protocols import dssgd
from privmed.protocols.base import TrainSettings
from privmed.run import execute, set_threads

THETAS = (0.01, 0.1, 1.0)
DP = {"gamma": 0.01, "dp_epsilon": 10.0}  # per upload; the SVT's sensitivity is 2γ


def measure(config: RunConfig, fed) -> dict:
    spec = model_spec(config, fed)
    test = fed.pooled("test")
    with dssgd.watch_local_models() as local:
        result = execute(config, fed=fed)
    glob = evaluate_predictor(spec, result.predictor, test)
    per_site = {i: evaluate_predictor(spec, arrays, test) for i, arrays in sorted(local.items())}
    return {"global": glob, "participants": per_site}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    set_threads()
    data = DataConfig(image_size=args.image_size)
    fed = build_federation(data, args.seed)
    print(f"DSSGD, {len(fed.sites)} sites, {args.rounds} rounds, pooled test n={len(fed.pooled('test'))}")
    print("setting                 | global acc / AUROC | participants acc mean [min, max] | AUROC mean [min, max] | s")
    for dp in (False, True):
        for theta in THETAS:
            options = {"theta_u": theta, **(DP if dp else {})}
            config = RunConfig(
                protocol="dssgd",
                seed=args.seed,
                data=data,
                train=TrainSettings(rounds=args.rounds),
                options=options,
                reproducible_noise=True,
            )
            start = time.perf_counter()
            m = measure(config, fed)
            acc = np.array([v["accuracy"] for v in m["participants"].values()])
            auc = np.array([v["auroc"] for v in m["participants"].values()])
            label = f"θu={theta:<4} {'DP ε=' + str(DP['dp_epsilon']) if dp else 'no DP':>10}"
            print(
                f"{label:23} | {m['global']['accuracy']:.3f} / {m['global']['auroc']:.3f}      "
                f"| {acc.mean():.3f} [{acc.min():.3f}, {acc.max():.3f}]            "
                f"| {auc.mean():.3f} [{auc.min():.3f}, {auc.max():.3f}] | {time.perf_counter() - start:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
