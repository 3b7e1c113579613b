"""Split learning (Jeon et al. 2019) beside FedAvg and CWT at equal compute, and what its cut layer leaks.

Runs the review suite's split rows (labels at the server, U-shaped, NoPeek)
and the FedAvg and CWT rows on the default phantom, over ``--seeds`` seeds
(each row's figures as mean ± 95 % CI, paired by seed as the bench does),
with the audit's activation-inversion attack (decoder on held-out patients,
white-box optimisation, dCor, norm-based label leakage). Every row trains
the same rounds, local epochs and batch size: each site's images pass once
per round through the whole network. Prints one line per row and the
split rows' leakage beside its nulls and positive control; the ratios
(bytes, wall time) are against FedAvg measured in the same run.

Run: PYTHONPATH=. python benchmarks/split_compare.py [--seeds 3] [--rounds N] [--image-size S] [--jobs J]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from privmed.bench.suite import run_suite, split_rows
from privmed.config import DataConfig, RunConfig, TrainSettings
from privmed.run import set_threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--runs-dir", default="/tmp/split-bench")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=None, help="phantom image size (default: the bench's)")
    args = ap.parse_args()
    set_threads()
    data = DataConfig(image_size=args.image_size) if args.image_size else DataConfig()
    base = RunConfig(
        seed=0, data=data, train=TrainSettings(rounds=args.rounds or TrainSettings().rounds, local_epochs=1)
    )
    rows = [(p, dataclasses.replace(base, protocol=p, name=p)) for p in ("fedavg", "cwt")] + split_rows(base)
    out = run_suite(
        runs_dir=args.runs_dir,
        rows=rows,
        seeds=args.seeds,
        attacks=("activation-inversion",),
        jobs=args.jobs,
        references=("fedavg",),
    )
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "results.json").read_text())
    ref = next(r for r in summary["rows"] if r["label"] == "fedavg")["figures"]
    print(f"{args.seeds} seeds, {base.train.rounds} rounds, phantom {data.image_size}px; mean ± 95 % CI")
    for r in summary["rows"]:
        f = r["figures"]

        def cell(name: str, fmt: str = ".3f", f: dict = f) -> str:
            if name not in f:
                return "—"
            return f"{f[name]['mean']:{fmt}} ± {f[name]['ci95']:{fmt}}"

        kb, wall = f["kB/site/round"]["mean"], f["wall"]["mean"]
        print(
            f"{r['label']:<22} AUROC {cell('test AUROC')}  bal.acc {cell('balanced accuracy')}  "
            f"kB/site/round {cell('kB/site/round', '.0f')} ({kb / ref['kB/site/round']['mean']:.2f}x FedAvg)  "
            f"wall {cell('wall', '.1f')} s ({wall / ref['wall']['mean']:.2f}x FedAvg)"
        )
    for c in summary["comparisons"]:
        print(
            f"  {c['row']} − {c['reference']}: AUROC {c['difference']:+.3f} ± {c['ci95']:.3f} (p={c['p']:.3f}, "
            f"{'significant' if c['significant'] else 'not significant'})"
        )
    print("leakage (activation-inversion audit, coordinator's view):")
    for r in summary["rows"]:
        f = r["figures"]
        if "activation inversion PSNR" not in f:
            continue
        print(
            f"{r['label']:<22} decoder PSNR {f['activation inversion PSNR']['mean']:.1f} ± "
            f"{f['activation inversion PSNR']['ci95']:.1f} dB, white box {f['white-box inversion PSNR']['mean']:.1f} ± "
            f"{f['white-box inversion PSNR']['ci95']:.1f} dB, dCor {f['dCor(input, activations)']['mean']:.3f} ± "
            f"{f['dCor(input, activations)']['ci95']:.3f}"
            + (
                f", label AUC {f['label leakage AUC']['mean']:.3f} ± {f['label leakage AUC']['ci95']:.3f}"
                if "label leakage AUC" in f
                else ""
            )
        )
    for r in results:
        if r["seed"] == 0 and "activation inversion PSNR dB (decoder)" in r["privacy"].get("leakage", {}):
            leak = r["privacy"]["leakage"]
            print(f"  seed 0 {r['label']}: " + ", ".join(f"{k} {v:.3f}" for k, v in leak.items()))


if __name__ == "__main__":
    main()
