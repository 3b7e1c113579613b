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
Two processes, then the pooled report (rows are seeded: the split does not change their numbers):
  ... --only fedavg,cwt,split --runs-dir /tmp/a & ... --only "split U-shaped,split + NoPeek λ=1" --runs-dir /tmp/b
  ... --report /tmp/a/bench /tmp/b/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from privmed.bench.stats import compare, summarise
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
    ap.add_argument("--only", default=None, help="comma-separated row labels to run (the others: another process)")
    ap.add_argument("--report", nargs="*", default=None, help="only report: the bench directories to pool")
    args = ap.parse_args()
    set_threads()
    data = DataConfig(image_size=args.image_size) if args.image_size else DataConfig()
    train = TrainSettings(rounds=args.rounds or TrainSettings().rounds, local_epochs=1)
    base = RunConfig(seed=0, data=data, train=train)
    rows = [(p, dataclasses.replace(base, protocol=p, name=p)) for p in ("fedavg", "cwt")] + split_rows(base)
    if args.report is None:
        if args.only:
            rows = [r for r in rows if r[0] in args.only.split(",")]
        out = run_suite(
            runs_dir=args.runs_dir,
            rows=rows,
            seeds=args.seeds,
            attacks=("activation-inversion",),
            jobs=args.jobs,
            references=("fedavg",),
        )
        dirs = [out]
    else:
        dirs = [Path(d) for d in args.report]
    labels = {cfg.name: label for label, cfg in rows}
    report([r for d in dirs for r in load(d, labels)])


def load(path: Path, labels: dict[str, str]) -> list[dict]:
    """A finished bench's results.json, or the rows an unfinished one has written (``.bench.partial``)."""
    if (path / "results.json").is_file():
        return json.loads((path / "results.json").read_text())
    rows = [json.loads(p.read_text()) for p in sorted(path.glob("*/result.json"))]
    return [{"label": labels[r["config"]["name"].rsplit("-s", 1)[0]], **r} for r in rows]


def report(results: list[dict]) -> None:
    """One line per row (mean ± 95 % CI over seeds), the paired AUROC differences to FedAvg, the leakage."""
    summary = {"rows": summarise(results), "comparisons": compare(results, ("fedavg",))}
    first = results[0]["config"]
    print(
        f"{len({r['seed'] for r in results})} seeds, {first['train']['rounds']} rounds, phantom "
        f"{first['data']['image_size']}px; mean ± 95 % CI"
    )
    ref = next((r for r in summary["rows"] if r["label"] == "fedavg"), {"figures": {}})["figures"]
    for r in summary["rows"]:
        f = r["figures"]

        def cell(name: str, fmt: str = ".3f", f: dict = f) -> str:
            if name not in f:
                return "—"
            return f"{f[name]['mean']:{fmt}} ± {f[name]['ci95']:{fmt}}"

        def ratio(name: str, f: dict = f) -> str:
            return f" ({f[name]['mean'] / ref[name]['mean']:.2f}x FedAvg)" if name in ref else ""

        print(
            f"{r['label']:<22} AUROC {cell('test AUROC')}  bal.acc {cell('balanced accuracy')}  "
            f"kB/site/round {cell('kB/site/round', '.0f')}{ratio('kB/site/round')}  "
            f"wall {cell('wall', '.1f')} s{ratio('wall')}"
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
