"""Privacy-Net's trade-off over λ: Dice against re-identification by a fresh attacker, with CIs over seeds.

For each seed (one phantom cohort per seed, shared by every row of that
seed): a U-Net trained by FedAvg on the raw images (the raw-image
segmenter), then Privacy-Net trained by the same FedAvg rounds at each λ.
For each Privacy-Net run, the audit's fresh attacker
(:func:`privmed.attacks.harness.measure_reidentification`) is trained on the
frozen encoder's encodings of identity-known training patients and scored on
unseen test patients; the same attacker on the raw images is the positive
control, chance the null. Also: bytes per site per round and wall seconds.
Prints mean ± 95 % CI half-width over the seeds.

Run: PYTHONPATH=. python benchmarks/privacy_net_tradeoff.py [--seeds 3] [--rounds 10] [--image-size 16]
     [--lams 0,0.1,1,10]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from privmed.attacks.harness import Target, measure_reidentification
from privmed.bench.stats import mean_ci
from privmed.config import DataConfig, RunConfig, TrainSettings
from privmed.engine.session import build_federation, model_spec
from privmed.run import execute, set_threads


def fmt(values: list[float]) -> str:
    mean, half = mean_ci(values)
    return f"{mean:.3f} ± {half:.3f}" if half == half else f"{mean:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--lams", default="0,0.1,1,10")
    ap.add_argument("--attacker-epochs", type=int, default=5)
    args = ap.parse_args()
    set_threads()
    lams = [float(v) for v in args.lams.split(",")]
    rows: dict[str, dict[str, list[float]]] = {}

    def add(label: str, **figures: float) -> None:
        for k, v in figures.items():
            rows.setdefault(label, {}).setdefault(k, []).append(v)

    for seed in range(args.seeds):
        base = RunConfig(
            protocol="fedavg",
            model="unet",
            task="segmentation",
            seed=seed,
            data=DataConfig(image_size=args.image_size),
            train=TrainSettings(rounds=args.rounds),
        )
        fed = build_federation(base.data, seed)
        raw = execute(base, fed=fed)
        add(
            "raw images (U-Net, FedAvg)",
            dice=raw.performance["final"]["dice"],
            kb=raw.communication["bytes_per_site_per_round"] / 1000,
            wall=raw.runtime["wall_seconds"],
        )
        print(f"seed {seed} raw images: dice {raw.performance['final']['dice']:.3f}", flush=True)
        control = None  # the raw-image attacker: the same cohorts for every λ of this seed, measured once
        for lam in lams:
            cfg = dataclasses.replace(base, protocol="privacy-net", model="privacy-net", options={"lam": lam})
            result = execute(cfg, fed=fed)
            start = time.perf_counter()
            reid = measure_reidentification(
                Target(cfg, fed, model_spec(cfg, fed), result.predictor), epochs=args.attacker_epochs, control=control
            )
            control = reid["positive_control_raw"]
            add(
                f"privacy-net λ={lam:g}",
                dice=result.performance["final"]["dice"],
                top1=reid["encoded"]["top1"],
                auc=reid["encoded"]["verification_auc"],
                top1_raw=reid["positive_control_raw"]["top1"],
                auc_raw=reid["positive_control_raw"]["verification_auc"],
                chance=reid["null"]["top1"],
                kb=result.communication["bytes_per_site_per_round"] / 1000,
                wall=result.runtime["wall_seconds"],
                attack_s=time.perf_counter() - start,
            )
            print(
                f"seed {seed} λ={lam:g}: "
                + ", ".join(f"{k} {v[-1]:.3f}" for k, v in rows[f"privacy-net λ={lam:g}"].items()),
                flush=True,
            )
        print(f"seed {seed} done", flush=True)

    print(
        f"\nPrivacy-Net trade-off: {args.seeds} seeds, {args.rounds} FedAvg rounds, {args.image_size} px phantom, "
        f"fresh attacker {args.attacker_epochs} epochs (mean ± 95 % CI)"
    )
    cols = [
        ("dice", "Dice"),
        ("top1", "re-id top-1 (enc.)"),
        ("auc", "verif. AUC (enc.)"),
        ("top1_raw", "top-1 raw (control)"),
        ("auc_raw", "AUC raw (control)"),
        ("chance", "top-1 chance"),
        ("kb", "kB/site/round"),
        ("wall", "wall s"),
    ]
    print("| row | " + " | ".join(c for _, c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for label, figs in rows.items():
        cells = [fmt(figs[k]) if k in figs else "—" for k, _ in cols]
        print(f"| {label} | " + " | ".join(cells) + " |")
    chance_auc = 0.5
    print(f"verification AUC null (chance): {chance_auc}")


if __name__ == "__main__":
    main()
