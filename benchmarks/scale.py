"""Scale: FedAvg with 100 sites (~20 phantom images each), 3 rounds; ``--sweep``: 10, 100 and 1,000 sites.

Prints, in one run: the protocol's wall time per round against the sum of the
sites' own handler time (their local training) in that round — goal ratio
<= 1.25, i.e. the coordinator, serialisation and aggregation add at most 25 %
— and the process's peak resident memory (goal < 2 GB).

Usage: .venv/bin/python benchmarks/scale.py [--sites 100] [--rounds 3]
       .venv/bin/python benchmarks/scale.py --sweep   # each size in its own process (its own peak memory)

Measured on the 2-core development machine (shared), 2 rounds: 1,000 sites,
20 images each: ratio 1.186 and 1.186, peak RSS 893 MB.
"""

from __future__ import annotations

import argparse
import logging
import resource
import subprocess
import sys
import time

import torch

from privmed.config import DataConfig, RunConfig, TrainSettings
from privmed.data.partition import partition
from privmed.data.phantom import PhantomConfig, make_phantom
from privmed.engine.grid import setup_frozen
from privmed.engine.session import assemble


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sweep", action="store_true", help="run 10, 100 and 1,000 sites, each in its own process")
    args = ap.parse_args()
    if args.sweep:
        for n in (10, 100, 1000):
            subprocess.run([sys.executable, __file__, "--sites", str(n), "--rounds", str(args.rounds)], check=True)
        return
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    ds = make_phantom(
        PhantomConfig(n_sites=args.sites, patients_per_site=(8,) * args.sites, images_per_patient=4, seed=0)
    )
    fed = partition(ds, n_sites=args.sites, split="natural", seed=0)
    session = assemble(
        RunConfig(protocol="fedavg", data=DataConfig(sites=args.sites), train=TrainSettings(rounds=args.rounds)),
        fed=fed,
    )
    grid = session.grid
    marks = [time.perf_counter()]
    site_marks = [0.0]

    def on_round(rnd, predictor):
        marks.append(time.perf_counter())
        site_marks.append(sum(grid.site_seconds.values()))

    session.ctx.evaluate_fn = on_round
    with setup_frozen():  # as privmed.run.execute does
        session.protocol.run(session.ctx)
    imgs = sum(len(s.train) for s in fed.sites) / args.sites
    print(f"{args.sites} sites, {imgs:.1f} training images per site, {args.rounds} rounds")
    for r in range(1, len(marks)):
        wall, local = marks[r] - marks[r - 1], site_marks[r] - site_marks[r - 1]
        print(f"round {r}: wall {wall:.2f} s, sum of site time {local:.2f} s, ratio {wall / local:.3f}  (goal <= 1.25)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MB  (goal < 2048 MB)")
    print(f"bytes per site per round: {grid.traffic.total() / args.sites / args.rounds:,.0f}")


if __name__ == "__main__":
    main()
