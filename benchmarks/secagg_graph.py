"""SecAgg+ on Bell et al.'s O(log n) neighbour graph against the complete graph (Bonawitz et al.), at 10/50/100 sites.

One round of secagg-fedavg on a small phantom (8 patients x 4 images of 16x16
per site), each graph in the same run; prints the bytes each site sends and
receives, the wall time, and the log graph's ratio to the complete graph's.
Usage: python benchmarks/secagg_graph.py [--sites 10 50 100]
"""

from __future__ import annotations

import argparse
import time

from privmed.config import DataConfig, RunConfig, TrainSettings
from privmed.data.partition import partition
from privmed.data.phantom import PhantomConfig, make_phantom
from privmed.protocols.secagg_fedavg import SecAggOptions
from privmed.run import execute, set_threads


def one_round(fed, n: int, graph: str) -> tuple[float, float]:
    cfg = RunConfig(
        protocol="secagg-fedavg",
        privacy={"mechanism": "secagg"},
        options={"graph": graph},
        data=DataConfig(sites=n, image_size=16),
        train=TrainSettings(rounds=1),
    )
    t0 = time.perf_counter()
    result = execute(cfg, fed=fed)
    comm = result.communication
    return (comm["bytes_up"] + comm["bytes_down"]) / n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, nargs="+", default=[10, 50, 100])
    args = ap.parse_args()
    set_threads()
    print(f"{'sites':>5} {'graph':>8} {'shares':>6} {'threshold':>9} {'kB/site':>9} {'wall s':>7}  log/complete")
    for n in args.sites:
        ds = make_phantom(
            PhantomConfig(n_sites=n, image_size=16, patients_per_site=(8,) * n, images_per_patient=4, seed=0)
        )
        fed = partition(ds, n_sites=n, split="natural", seed=0)
        measured = {}
        for graph in ("complete", "log"):
            opts = SecAggOptions(graph=graph)
            measured[graph] = one_round(fed, n, graph)
            kb, wall = measured[graph]
            shares, threshold = opts.shares(n), opts.reconstruction_threshold(n)
            print(f"{n:>5} {graph:>8} {shares:>6} {threshold:>9} {kb / 1000:>9.1f} {wall:>7.1f}")
        (kb_c, wall_c), (kb_l, wall_l) = measured["complete"], measured["log"]
        print(f"{n:>5} {'ratio':>8} {'':>6} {'':>9} {kb_l / kb_c:>9.3f} {wall_l / wall_c:>7.3f}  (bytes, wall)")


if __name__ == "__main__":
    main()
