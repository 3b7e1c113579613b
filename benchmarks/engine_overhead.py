"""Engine overhead: FedAvg through Flower + the in-process Grid, 1 site, E epochs,
against a plain PyTorch loop over the same data and epochs, in the same run.

Prints the ratio (goal <= 1.10). The FedAvg side includes everything the
engine adds per round: Flower's strategy loop, serialising the model to and
from Flower's wire format both ways, rebuilding the model at the site, and
the server-side update check. Per-round validation (the harness's
measurement) is excluded from both sides.

Usage: .venv/bin/python benchmarks/engine_overhead.py [--epochs 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from privmed.config import DataConfig, RunConfig, TrainSettings
from privmed.data.partition import partition
from privmed.data.phantom import PhantomConfig, make_phantom
from privmed.engine.session import assemble
from privmed.site import ModelSpec
from privmed.tasks import batches


def plain_loop(spec: ModelSpec, data, epochs: int, lr: float, batch_size: int) -> float:
    t0 = time.perf_counter()
    model = spec.build(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for x, y in batches(data, "classification", batch_size, gen):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return time.perf_counter() - t0


def engine_fedavg(fed, epochs: int, lr: float, batch_size: int) -> float:
    t0 = time.perf_counter()
    train = TrainSettings(rounds=epochs, local_epochs=1, lr=lr, batch_size=batch_size)
    session = assemble(RunConfig(protocol="fedavg", data=DataConfig(sites=1), train=train), fed=fed)
    session.protocol.run(session.ctx)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    ds = make_phantom(PhantomConfig(n_sites=1, patients_per_site=(150,), seed=0))
    fed = partition(ds, n_sites=1, split="natural", seed=0)
    site = fed.sites[0]
    spec = ModelSpec("cnn", 1, 2, "classification")
    print(f"1 site, {len(site.train)} training images, {args.epochs} epochs, best of {args.repeats}")
    plain, engine = [], []
    for _ in range(args.repeats):  # interleaved so machine noise hits both alike
        plain.append(plain_loop(spec, site.train, args.epochs, 1e-3, 32))
        engine.append(engine_fedavg(fed, args.epochs, 1e-3, 32))
    p, e = min(plain), min(engine)
    print(f"plain PyTorch loop : {p:.3f} s")
    print(f"FedAvg on the grid : {e:.3f} s")
    print(f"ratio engine/plain : {e / p:.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
