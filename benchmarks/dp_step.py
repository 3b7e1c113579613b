"""Time per DP-SGD step against the non-private step, per Opacus mode and privmed's book-keeping (issue 18).

Models: privmed's default CNN (``cnn``) and MONAI's DenseNet121 (2-D) made
DP-ready the way Opacus does it (``ModuleValidator.fix``: BatchNorm ->
GroupNorm; ReLUs not in place, which Opacus' hooks refuse). Every variant trains
the same network from the same weights on the same batch (32 images, 1
channel, one torch thread) with Adam; the non-private step is measured in the
same run, interleaved with the DP variants so load on a shared machine hits all
alike. Variants: Opacus' ``make_private`` with ``grad_sample_mode`` hooks,
functorch, ew and ghost (fast gradient clipping: ghost norms for Linear, two
backward passes); privmed's ``clipping="bookkeeping"`` (the DP-SGD default);
for the CNN also P3SGD's per-patient step (4 images per patient) with Opacus'
per-sample gradients and with book-keeping. Noise (σ = 1, C = 1) is drawn in
every DP step.

Prints, per model, each variant's time per step and its ratio to the
non-private step: the median over the runs and each run (each run: the median
of ``--steps`` interleaved steps). Goals: book-keeping ≤ 1.3x (CNN) and ≤ 1.5x
(DenseNet121). Then a phase profile of the book-keeping step (forward,
output-gradient backward, per-layer norms, clipped sums, noise and Adam) beside
the non-private step's, which says where the remaining time goes.

    python benchmarks/dp_step.py [--runs 3] [--steps 15] [--densenet-steps 5] [--size 32]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

import privmed.privacy.bookkeeping as bk
from privmed.models import build_model
from privmed.privacy.p3sgd import bookkeeping_patient_gradients, patient_gradients

BATCH, SIGMA, CLIP = 32, 1.0, 1.0
Step = Callable[[], None]


def densenet121() -> nn.Module:
    from monai.networks.nets import DenseNet121
    from opacus.validators import ModuleValidator

    net = ModuleValidator.fix(DenseNet121(spatial_dims=2, in_channels=1, out_channels=2))
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return net


def network(name: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return densenet121() if name == "densenet121" else build_model("cnn", in_channels=1, n_classes=2, seed=0)


def non_private(name: str, x: torch.Tensor, y: torch.Tensor) -> Step:
    net = network(name)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def opacus(name: str, x: torch.Tensor, y: torch.Tensor, mode: str) -> Step:
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    net = network(name)
    kwargs = {"criterion": nn.CrossEntropyLoss()} if mode == "ghost" else {}
    out = PrivacyEngine(accountant="rdp").make_private(
        module=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
        data_loader=DataLoader(TensorDataset(x, y), batch_size=BATCH),
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        poisson_sampling=False,
        noise_generator=torch.Generator().manual_seed(1),
        grad_sample_mode=mode,
        **kwargs,
    )
    module, opt = out[0], out[1]
    criterion = out[2] if mode == "ghost" else nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        criterion(module(x), y).backward()
        opt.step()

    return step


def bookkeeping(name: str, x: torch.Tensor, y: torch.Tensor) -> Step:
    net = network(name)
    module, opt = bk.make_private(
        net,
        torch.optim.Adam(net.parameters(), lr=1e-3),
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        expected_batch_size=BATCH,
        generator=torch.Generator().manual_seed(1),
    )

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        module.clipped_backward(nn.functional.cross_entropy(module(x), y))
        opt.step()

    step.module, step.opt = module, opt  # for the phase profile
    return step


def p3sgd(name: str, x: torch.Tensor, y: torch.Tensor, clipping: str) -> Step:
    """P3SGD's step body (privmed.privacy.p3sgd): per-patient clipped sum, noise, Adam."""
    from opacus import GradSampleModule

    net = network(name)
    if clipping == "bookkeeping":
        module, clipped = bk.BookkeepingGradSampleModule(net, max_grad_norm=CLIP, loss_reduction="sum"), None
    else:
        module = GradSampleModule(net, loss_reduction="sum")
    clipped = bookkeeping_patient_gradients if clipping == "bookkeeping" else patient_gradients
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    patients = torch.arange(len(x)) // 4
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        summed, _ = clipped(module, criterion, x, y, patients, len(x) // 4, CLIP)
        for p, s in zip(params, summed):
            p.grad = (s + torch.normal(0.0, SIGMA * CLIP, size=s.shape, generator=gen)) / (len(x) // 4)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def variants(name: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, Step]:
    out: dict[str, Step] = {"non-private": non_private(name, x, y)}
    for mode in ("hooks", "functorch", "ew", "ghost"):
        try:
            out[f"opacus {mode}"] = opacus(name, x, y, mode)
            out[f"opacus {mode}"]()  # fails here if Opacus cannot run the mode on this network
        except Exception as e:  # noqa: BLE001 - a mode Opacus does not support is reported, not fatal
            out.pop(f"opacus {mode}", None)
            print(f"  opacus {mode}: not run on {name} ({type(e).__name__}: {str(e)[:100]})")
    out["privmed bookkeeping"] = bookkeeping(name, x, y)
    if name == "cnn":
        out["p3sgd opacus (patient)"] = p3sgd(name, x, y, "opacus")
        out["p3sgd bookkeeping (patient)"] = p3sgd(name, x, y, "bookkeeping")
    return out


def measure(steps: dict[str, Step], n: int) -> dict[str, float]:
    """Median seconds per step of each variant over ``n`` interleaved steps."""
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(n):
        for label, step in steps.items():
            t = time.process_time()
            step()
            times[label].append(time.process_time() - t)
    return {label: statistics.median(ts) for label, ts in times.items()}


def phase_profile(name: str, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
    """Where a book-keeping step's time goes, beside the non-private step's (medians over n steps, ms)."""
    net = network(name)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    np_phase: dict[str, list[float]] = defaultdict(list)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        t0 = time.process_time()
        loss = nn.functional.cross_entropy(net(x), y)
        t1 = time.process_time()
        loss.backward()
        t2 = time.process_time()
        opt.step()
        t3 = time.process_time()
        for k, v in (("forward", t1 - t0), ("backward (input + weight gradients)", t2 - t1), ("Adam", t3 - t2)):
            np_phase[k].append(v)
    step = bookkeeping(name, x, y)
    module, dp_opt, acc = step.module, step.opt, defaultdict(float)

    def timed(label: str, fn: Callable) -> Callable:
        def run(*args):
            t = time.process_time()
            out = fn(*args)
            acc[label] += time.process_time() - t
            return out

        return run

    module._ghost_layer = timed("norms: ghost layers (Gram matrices)", module._ghost_layer)
    module._instantiated_layer = timed("norms: instantiated layers (per-sample gradients)", module._instantiated_layer)
    module._output_gradients = timed("backward pass (with the hooks)", module._output_gradients)
    module._clipped_sums = timed("clipped sums (ghost layers: a weight-gradient pass)", module._clipped_sums)
    bk_phase: dict[str, list[float]] = defaultdict(list)
    for _ in range(n):
        acc.clear()
        dp_opt.zero_grad(set_to_none=True)
        t0 = time.process_time()
        loss = nn.functional.cross_entropy(module(x), y)
        t1 = time.process_time()
        module.clipped_backward(loss)
        t2 = time.process_time()
        dp_opt.step()
        t3 = time.process_time()
        hooks = acc["norms: ghost layers (Gram matrices)"] + acc["norms: instantiated layers (per-sample gradients)"]
        acc["backward pass (with the hooks)"] -= hooks  # the backward's own autograd work
        bk_phase["forward (with activation hooks)"].append(t1 - t0)
        for k in ("backward pass (with the hooks)", *sorted(set(acc) - {"backward pass (with the hooks)"})):
            bk_phase[k.replace("(with the hooks)", "to the output gradients")].append(acc[k])
        bk_phase["clip factors"].append(t2 - t1 - sum(acc.values()))
        bk_phase["noise + Adam"].append(t3 - t2)
    print(f"  phase profile, {name} (ms per step, median of {n}); non-private:")
    for k, v in np_phase.items():
        print(f"    {k:58s} {statistics.median(v) * 1e3:8.1f}")
    print("  book-keeping:")
    for k, v in bk_phase.items():
        print(f"    {k:58s} {statistics.median(v) * 1e3:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15, help="interleaved steps per run (CNN)")
    ap.add_argument("--densenet-steps", type=int, default=5, help="interleaved steps per run (DenseNet121)")
    ap.add_argument("--size", type=int, default=32, help="image side (both models)")
    ap.add_argument("--models", default="cnn,densenet121")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # Opacus' secure-RNG and full-backward-hook warnings on every call
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, 1, args.size, args.size, generator=gen), torch.randint(0, 2, (BATCH,), generator=gen)
    goals = {"cnn": 1.3, "densenet121": 1.5}
    for name in args.models.split(","):
        n = args.steps if name == "cnn" else args.densenet_steps
        steps = variants(name, x, y)
        measure(steps, 2)  # warm-up
        runs = [measure(steps, n) for _ in range(args.runs)]
        base = [r["non-private"] for r in runs]
        print(
            f"{name} {args.size}x{args.size}, batch {BATCH}, 1 thread, {args.runs} runs x {n} interleaved steps: "
            f"non-private {statistics.median(base) * 1e3:.1f} ms/step "
            f"(runs: {' '.join(f'{b * 1e3:.1f}' for b in base)})"
        )
        for label in steps:
            if label == "non-private":
                continue
            ratios = [r[label] / r["non-private"] for r in runs]
            ms = statistics.median(r[label] for r in runs) * 1e3
            print(
                f"  {label:30s} {ms:8.1f} ms/step  ratio {statistics.median(ratios):.2f}  "
                f"(runs: {' '.join(f'{q:.2f}' for q in ratios)})"
            )
        ratio = statistics.median(r["privmed bookkeeping"] / r["non-private"] for r in runs)
        verdict = "met" if ratio <= goals[name] else "NOT met"
        print(f"  goal book-keeping <= {goals[name]}x: {verdict} ({ratio:.2f}x)")
        phase_profile(name, x, y, n)


if __name__ == "__main__":
    main()
