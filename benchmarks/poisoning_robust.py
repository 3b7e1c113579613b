"""Poisoning where robust aggregation is valid: 10 sites, f = 1 and 2 attackers, label flip and backdoor.

FedAvg against FedMedian, FedTrimmedAvg (β = f/n), Krum and MultiKrum
(valid: n = 10 > 2f + 2) and an update-norm bound (Sun et al. 2019) on the
real FedAvg round loop (Flower strategies; ``privmed.attacks.poisoning``).
The norm bound is the median norm of the honest sites' first-round updates
(what a coordinator can set from the norms it sees; Sun et al. choose it
from benign norms). Attack success is on the pooled test set with a Wilson
95 % interval over test images (one seed: the interval is over images, not
runs). Baselines: f = 0 under each aggregator (its clean accuracy and the
rate of the attack's outcome without any attacker).

Run: PYTHONPATH=. python benchmarks/poisoning_robust.py [--rounds N] [--sites N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from privmed.attacks import poisoning
from privmed.config import DataConfig, RunConfig
from privmed.engine.result import predict
from privmed.engine.session import build_federation, model_spec
from privmed.protocols.base import TrainSettings
from privmed.run import set_threads
from privmed.tasks import train_local


def honest_norm(config: RunConfig, fed) -> float:
    """Median L2 norm of the sites' first-round updates from the initial model (no attacker)."""
    spec = model_spec(config, fed)
    norms = []
    for s in fed.sites:
        model = spec.build(config.seed)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        t = config.train
        train_local(model, s.train, task="classification", epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr)
        norms.append(float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm()))
    return float(np.median(norms))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=1.0, help="of a malicious site's training images poisoned")
    ap.add_argument("--boost", type=float, default=1.0, help="model replacement: malicious updates scaled by this")
    ap.add_argument(
        "--dataset", default="phantom", help="phantom (v2) or phantom:v1, on which FedAvg learns in 15 rounds"
    )
    args = ap.parse_args()
    set_threads()
    config = RunConfig(
        protocol="fedavg",
        seed=args.seed,
        data=DataConfig(dataset=args.dataset, sites=args.sites),
        train=TrainSettings(rounds=args.rounds, lr=args.lr),
    )
    fed = build_federation(config.data, args.seed)
    spec = model_spec(config, fed)
    test = fed.pooled("test")
    clip = honest_norm(config, fed)
    print(
        f"{len(fed.sites)} sites, {args.rounds} rounds, lr {args.lr}, test n={len(test)}, norm bound {clip:.4f},"
        f" poisoned fraction {args.fraction}, boost {args.boost}, {args.dataset}"
    )
    print("kind       | f | aggregator    | clean acc | attack success [95% CI]   | baseline | s")
    for f in (0, 1, 2):
        for kind in poisoning.KINDS:
            if f == 0 and kind != poisoning.KINDS[0]:
                continue  # f = 0: one clean run per aggregator serves both attacks' baselines
            cfg = poisoning.PoisonConfig(
                kind=kind, n_malicious=f, fraction=args.fraction, boost=args.boost, seed=args.seed
            )
            poisoned, bad = poisoning.poison_federation(fed, cfg)
            if bad:
                sizes = {s.name: len(s.train) for s in fed.sites if s.name in bad}
                print(f"-- f={f} {kind}: malicious sites (training images) {sizes}", flush=True)
            for name in poisoning.AGGREGATORS:
                start = time.perf_counter()
                try:
                    strategy = poisoning.make_aggregator(name, n_sites=len(fed.sites), n_malicious=f, clip_norm=clip)
                except Exception as exc:  # outside the aggregator's validity condition
                    print(f"{kind:10} | {f} | {name:13} | n/a: {exc}")
                    continue
                mods = poisoning.malicious_mods(fed, bad, cfg)
                weights = poisoning.train_fedavg(config, poisoned, strategy, site_mods=mods)
                acc = float((predict(spec, weights, test).argmax(1) == test.labels).mean())
                kinds = poisoning.KINDS if f == 0 else (kind,)
                for k in kinds:
                    c = poisoning.PoisonConfig(kind=k, n_malicious=f, fraction=args.fraction, seed=args.seed)
                    r = poisoning.attack_success(lambda d, w=weights: predict(spec, w, d), test, c, fed.n_classes)
                    base = r.get("without_trigger", r.get("chance"))
                    lo, hi = r["attack_success_ci95"]
                    print(
                        f"{k:10} | {f} | {name:13} | {acc:.3f}     | {r['attack_success']:.3f} [{lo:.3f}, {hi:.3f}]"
                        f"     | {base:.3f}    | {time.perf_counter() - start:.0f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
