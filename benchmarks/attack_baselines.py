"""Every leakage figure of an audit beside its null and its positive control, on a trained default run.

Trains the default FedAvg run (phantom, 4 sites, the default CNN) for
``--rounds`` rounds, audits it with membership inference (loss threshold,
offline LiRA with a global variance), Inverting Gradients against each
party's view, model inversion (with the untrained-model null) and linkage,
and prints each figure with the baseline an attacker gets for free and the
control that shows the attack can succeed. ``--dp`` adds the same run under
DP-SGD at ε = 8 for comparison.

Run: PYTHONPATH=. python benchmarks/attack_baselines.py [--rounds N] [--dp]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from privmed.audit import load_target, run_attacks
from privmed.config import RunConfig
from privmed.protocols.base import TrainSettings
from privmed.run import run, set_threads

ATTACKS = ("membership", "lira", "inversion", "model-inversion", "linkage")


def show(name: str, audit) -> None:
    r = audit.results
    print(f"== {name}")
    for kind in ("membership", "lira"):
        if kind in r:
            m = r[kind]
            ctrl = m.get("positive_control", {})
            print(
                f"{kind:16} AUC image {m['image']['auc']:.3f} patient {m['patient']['auc']:.3f}"
                f" | TPR@1%FPR {m['image']['tpr_at_1pct_fpr']:.3f} TPR@0.1%FPR {m['image']['tpr_at_0.1pct_fpr']:.3f}"
                f" (non-members {m['image']['non_members']}) | null AUC 0.5"
                + (
                    f" | control (undefended shadow): LiRA AUC {ctrl['lira']['auc']:.3f},"
                    f" TPR@1% {ctrl['lira']['tpr_at_1pct_fpr']:.3f}; loss AUC {ctrl['loss_threshold']['auc']:.3f}"
                    if ctrl
                    else ""
                )
            )
    if "inversion" in r:
        for party, v in r["inversion"]["per_party"].items():
            if "per_batch_size" not in v:
                print(f"inversion {party:14} n/a: {v['not_applicable'][:70]}")
                continue
            for b, row in v["per_batch_size"].items():
                print(
                    f"inversion {party:14} B={b}: {row['psnr']:.1f} dB SSIM {row['ssim']:.3f}"
                    f" | raw-gradient reference {row['psnr_if_raw_gradient_sent']:.1f} dB"
                    f" | nulls: flat {row['psnr_flat_guess']:.1f} dB SSIM {row['ssim_flat_guess']:.3f},"
                    f" random {row['psnr_random_image']:.1f} dB"
                )
        c = r["inversion"]["positive_control"]
        print(f"inversion control (DLG on LeNet, raw gradient): {c['psnr']:.1f} dB SSIM {c['ssim']:.3f}")
    if "model-inversion" in r:
        m = r["model-inversion"]
        print(
            f"model inversion: own-other corr gap {m['own_minus_other']:.3f} (own {m['corr_own_class_mean']:.3f})"
            f" | untrained null gap {m['null_untrained_model']['own_minus_other']:.3f}"
            f" | beyond null {m['gap_beyond_null']:.3f} | class means corr {m['class_means_correlation']:.3f}"
            f" | class-difference corr {m['corr_class_difference']:.3f}"
            f" (untrained null {m['null_untrained_model']['corr_class_difference']:.3f})"
        )
    if "linkage" in r:
        lk = r["linkage"]
        for rel in ("pseudonymised", "5-anonymous"):
            v = lk[rel]
            print(
                f"linkage {rel:14} re-identified {v['reidentified']:.3f} (precision {v['precision']:.3f})"
                f" | prosecutor avg {v['prosecutor_risk_avg']:.3f} max {v['prosecutor_risk_max']:.3f}"
                f" | journalist avg {v['journalist_risk_avg']:.3f} max {v['journalist_risk_max']:.3f}"
            )
        print(
            f"linkage control (exact full register) {lk['positive_control']['reidentified']:.3f}"
            f" | null (random guess) {lk['null_random_guess']:.4f} | register {lk['register']}"
        )
        for row in lk["by_k_and_knowledge"]:
            print(f"  k={row['k']:<2} {row['knowledge']:16} re-identified {row['reidentified']:.3f}")
    print("seconds:", {k: round(v) for k, v in audit.seconds.items()}, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--dp", action="store_true", help="also the same run under DP-SGD at ε = 8")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    set_threads()
    configs = {"fedavg": RunConfig(protocol="fedavg", name="fedavg", train=TrainSettings(rounds=args.rounds))}
    if args.dp:
        configs["fedavg + dp-sgd ε=8"] = RunConfig(
            protocol="fedavg",
            name="dpsgd",
            train=TrainSettings(rounds=args.rounds),
            privacy={"mechanism": "dp-sgd", "epsilon": 8.0},
        )
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in configs.items():
            start = time.perf_counter()
            result, path = run(cfg, runs_dir=Path(tmp))
            target, saved = load_target(path.parent)
            print(f"trained {name} in {time.perf_counter() - start:.0f} s: test {saved['performance']['final']}")
            audit = run_attacks(target, saved, attacks=ATTACKS, batch_sizes=(1,), run_name=name)
            show(name, audit)
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / f"{cfg.name}.audit.json").write_text(
                    json.dumps(audit.to_dict(), indent=1, default=float)
                )


if __name__ == "__main__":
    main()
