"""What encryption costs: HE-FedAvg (Paillier, CKKS), SecAgg+, SNT and FNT against plaintext FedAvg/CWT.

Same data, model and seed for every row; a warm-up run first so the first
row does not pay PyTorch's start-up. Prints, per row: final test accuracy,
bytes per site per round, the expansion factor of the encrypted update over
the float32 plaintext update, encryption/aggregation/decryption seconds per
round, and the wall-time ratio against plaintext FedAvg (or CWT for the
weight-transmission rows). Goals from the issue: one HE scheme within 2x
bytes (packed Paillier aims at 1.5x); CKKS-FedAvg within 1.5x wall time.

Per scheme at 4 and 20 sites over three repeats, with accuracy on runs that
learn: ``benchmarks/he_schemes.py``.

    PYTHONPATH=. python benchmarks/he_cost.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from privmed.config import RunConfig
from privmed.engine.result import evaluate_predictor
from privmed.engine.session import build_federation, model_spec
from privmed.privacy.he import dequantise, quantise
from privmed.privacy.sealed import flatten, layout_of, unflatten
from privmed.protocols.base import TrainSettings
from privmed.run import execute

ROWS = [  # (label, protocol, privacy, baseline label)
    ("fedavg", "fedavg", {}, None),
    ("he-fedavg ckks", "he-fedavg", {"mechanism": "he-ckks"}, "fedavg"),
    ("he-fedavg paillier", "he-fedavg", {"mechanism": "he-paillier"}, "fedavg"),
    ("he-fedavg stream", "he-fedavg", {"mechanism": "he-stream"}, "fedavg"),
    ("secagg-fedavg", "secagg-fedavg", {"mechanism": "secagg"}, "fedavg"),
    ("cwt", "cwt", {}, None),
    ("snt", "snt", {"mechanism": "aes-gcm"}, "cwt"),
    ("fnt", "fnt", {"mechanism": "aes-gcm"}, "cwt"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = RunConfig(seed=args.seed, train=TrainSettings(rounds=args.rounds))
    fed = build_federation(base.data, base.seed)
    execute(dataclasses.replace(base, train=TrainSettings(rounds=1)), fed=fed)  # warm-up
    results = {}
    print(
        f"{'row':<20} {'acc':>6} {'bytes/site/rnd':>15} {'expansion':>9} {'enc s/rnd':>9} {'agg s/rnd':>9} "
        f"{'dec s/rnd':>9} {'wall s':>7} {'wall ratio':>10}"
    )
    for label, protocol, privacy, baseline in ROWS:
        r = execute(dataclasses.replace(base, protocol=protocol, privacy=privacy), fed=fed)
        results[label] = r
        c, t = r.communication, r.runtime
        ratio = t["wall_seconds"] / results[baseline].runtime["wall_seconds"] if baseline else 1.0
        expansion = c.get("expansion_factor")
        phases = [t.get(f"{p}_seconds_per_round") for p in ("encrypt", "aggregate", "decrypt")]
        print(
            f"{label:<20} {r.performance['final']['accuracy']:>6.3f} {c['bytes_per_site_per_round']:>15,.0f} "
            f"{'' if expansion is None else f'{expansion:.2f}x':>9} "
            + " ".join(f"{'' if p is None else f'{p:.3f}':>9}" for p in phases)
            + f" {t['wall_seconds']:>7.1f} {f'{ratio:.2f}x vs {baseline}' if baseline else 'baseline':>10}"
        )
    acc = {k: r.performance["final"]["accuracy"] for k, r in results.items()}
    print(
        "accuracy change vs FedAvg after training (includes trajectory divergence from any tiny perturbation): "
        + ", ".join(
            f"{k} {100 * (acc[k] - acc['fedavg']):+.2f} points"
            for k in ("he-fedavg ckks", "he-fedavg paillier", "he-fedavg stream", "secagg-fedavg")
        )
    )
    # The quantisation alone: FedAvg's final model through Paillier's quantise/dequantise (20 bits, clip 2.0).
    spec = model_spec(base, fed)
    model = results["fedavg"].predictor
    quantised = unflatten(
        dequantise(quantise(flatten(model), clip=2.0, bits=20), clip=2.0, bits=20, count=1), layout_of(model)
    )
    test = fed.pooled("test")
    d = evaluate_predictor(spec, quantised, test)["accuracy"] - evaluate_predictor(spec, model, test)["accuracy"]
    print(
        f"quantisation alone (20 bits, clip 2.0) on FedAvg's final model: accuracy change {100 * d:+.2f} points "
        "(goal < 0.5)"
    )


if __name__ == "__main__":
    main()
