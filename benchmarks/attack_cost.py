"""What the attacks cost, against the cost of the run they attack (same machine, same process).

Baseline: one default FedAvg run (phantom 32x32, 4 sites, 10 rounds). Timed:
one Inverting Gradients reconstruction of a 32x32 image (300 iterations,
SmallCNN), one DLG reconstruction (LeNetZhu, 4 restarts), one offline LiRA
audit with 8 shadow models, and the whole default ``privmed audit`` of the
run (target: under 5 minutes on 2 cores).

Run: PYTHONPATH=. python benchmarks/attack_cost.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from privmed.attacks import gradient_inversion as gi
from privmed.attacks.harness import measure_lira
from privmed.audit import audit_run, load_target
from privmed.config import RunConfig
from privmed.run import run, set_threads


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    set_threads()
    with tempfile.TemporaryDirectory() as tmp:
        t_run, (_, path) = timed(lambda: run(RunConfig(protocol="fedavg", name="target"), runs_dir=Path(tmp)))
        target, _ = load_target(path.parent)
        x = torch.from_numpy(target.fed.sites[0].train.images[:1])
        y = torch.from_numpy(target.fed.sites[0].train.labels[:1])
        cnn = target.spec.build(0)
        t_ig, _ = timed(
            lambda: gi.reconstruct(
                cnn, gi.model_gradient(cnn, x, y), shape=(1, 32, 32), labels=y, config=gi.PRESETS["ig"]
            )
        )
        lenet = gi.LeNetZhu(1, 2, 32)
        t_dlg, _ = timed(
            lambda: gi.reconstruct(
                lenet, gi.model_gradient(lenet, x, y), shape=(1, 32, 32), labels=y, config=gi.PRESETS["dlg"]
            )
        )
        t_lira, _ = timed(lambda: measure_lira(target, n_shadows=8))
        t_audit, (audit, _) = timed(lambda: audit_run(path.parent))
    print(f"baseline: default FedAvg run                {t_run:7.1f} s")
    for name, t in (
        ("IG reconstruction, 32x32, 300 it", t_ig),
        ("DLG reconstruction, 32x32, 4 restarts", t_dlg),
        ("LiRA audit, 8 shadow models", t_lira),
        ("whole default audit", t_audit),
    ):
        print(f"{name:<43} {t:7.1f} s  = {t / t_run:5.2f} x the run")
    print("per attack in the audit: " + ", ".join(f"{k} {v:.1f} s" for k, v in audit.seconds.items()))
    print(f"whole audit under 5 minutes: {'yes' if t_audit < 300 else 'NO'}")


if __name__ == "__main__":
    main()
