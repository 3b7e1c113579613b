"""``privmed synth`` and the synthetic-data bench: load real data, train the (DP-)CGAN, release, evaluate.

The real data are the pooled sites of a federation (phantom: its natural
split; any other data set: an iid split into privmed's 4 default sites), as
one data holder would hold them: the CGAN trains on the pooled training
split; TSTR tests on the pooled test split; membership inference takes the
training images as members and the pooled validation split (held-out
patients, same distribution) as non-members.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privmed.data.base import ArraySet
from privmed.errors import PrivmedError
from privmed.synthetic.dp_cgan import CGANConfig, CGANResult, public_privacy, train_cgan


@dataclass(frozen=True)
class RealData:
    name: str
    n_classes: int
    train: ArraySet
    val: ArraySet
    test: ArraySet


def load_real(dataset: str, *, seed: int, image_size: int = 32) -> RealData:
    """The pooled train/val/test splits of ``dataset`` (phantom: natural split; others: iid over 4 sites)."""
    from privmed.config import DataConfig
    from privmed.engine.session import build_federation

    split = "natural" if dataset.split(":")[0] == "phantom" else "iid"
    fed = build_federation(DataConfig(dataset=dataset, split=split, image_size=image_size), seed)
    if len(fed.image_shape) != 3:
        raise PrivmedError(
            f"privmed synth makes 2-D images; {dataset} holds 3-D volumes (load its slices: ?slices=axial)"
        )
    return RealData(fed.dataset_name, fed.n_classes, fed.pooled("train"), fed.pooled("val"), fed.pooled("test"))


def synthesize(
    real: RealData, cfg: CGANConfig, *, n: int | None = None, sample_seed: int | None = None
) -> tuple[CGANResult, ArraySet]:
    """Train on ``real.train``; sample ``n`` (default: as many as the real training images) balanced images."""
    gan = train_cgan(real.train, real.n_classes, cfg)
    seed = cfg.seed + 1000 if sample_seed is None else sample_seed
    return gan, gan.sample(n or len(real.train), seed=seed)


def evaluate_release(
    real: RealData, synthetic: ArraySet, *, seed: int, extractor: Any = None, classifier: Any = None
) -> dict[str, Any]:
    """TSTR (cnn and logistic regression), Fréchet feature distance, membership AUC with its null.

    ``extractor``: the feature network (default: the cnn trained here on the real training split);
    ``classifier``: a cnn already trained on ``synthetic`` (default: trained here).
    """
    from privmed.synthetic.evaluate import features, frechet_distance, membership, train_classifier, tstr

    if extractor is None:
        extractor = train_classifier(real.train, real.n_classes, seed=seed)
    return {
        "tstr": tstr(synthetic, real.test, real.n_classes, seed=seed, model=classifier),
        "frechet": frechet_distance(features(extractor, real.test), features(extractor, synthetic)),
        "membership": membership(synthetic, real.train, real.val, seed=seed),
    }


def run_synth(
    *,
    dataset: str,
    cfg: CGANConfig,
    out: str | Path,
    image_size: int = 32,
    n: int | None = None,
    evaluate: bool = False,
    ledger: str | None = None,
    ledger_key: str | None = None,
) -> dict[str, Any]:
    """What ``privmed synth`` does: train, write the ``.npz`` and per-class grids, charge the ledger, evaluate."""
    from privmed.synthetic.dp_cgan import charge_ledger
    from privmed.synthetic.release import write_grids, write_medmnist

    out = Path(out)
    if out.suffix != ".npz":
        raise PrivmedError(f"--out must name a .npz file (MedMNIST format), got {out}")
    real = load_real(dataset, seed=cfg.seed, image_size=image_size)
    gan, synthetic = synthesize(real, cfg, n=n)
    charged = charge_ledger(gan, ledger=ledger, ledger_key=ledger_key, run=f"synth-{out.stem}")
    report: dict[str, Any] = {
        "dataset": real.name,
        "real_training_images": len(real.train),
        "real_training_patients": real.train.n_patients,
        "synthetic_images": len(synthetic),
        "config": {k: v for k, v in cfg.__dict__.items()},
        "steps": gan.steps,
        "wall_seconds": gan.wall_seconds,
        "privacy": public_privacy(gan.privacy),
        "ledger": charged,
    }
    if evaluate:
        report["evaluation"] = evaluate_release(real, synthetic, seed=cfg.seed)
    path = write_medmnist(synthetic, out, seed=cfg.seed, meta=report)
    report["files"] = [str(path), str(path.with_suffix(".json"))] + [
        str(p) for p in write_grids(synthetic, real.n_classes, out.with_suffix(""))
    ]
    return report


# --- the bench's rows -----------------------------------------------------------------------------------------------

BENCH_NON_PRIVATE_STEPS = 600  # the non-private CGAN's budget (the DP one stops at ε, ~143 steps on the phantom)


def bench_rows(
    *, seeds: int = 3, first_seed: int = 0, dataset: str = "phantom", image_size: int = 32, epsilon: float = 9.6,
    width: int = 16, progress: Any = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per seed: train-on-real, the non-private CGAN and DP-CGAN (ε), each with TSTR, distance and MIA; + control."""
    from privmed.synthetic.evaluate import positive_control, train_classifier

    rows = []
    for seed in range(first_seed, first_seed + seeds):
        real = load_real(dataset, seed=seed, image_size=image_size)
        extractor = train_classifier(real.train, real.n_classes, seed=seed)
        base = evaluate_release(real, real.train, seed=seed, extractor=extractor, classifier=extractor)
        base["membership"] = {}  # the real images themselves: membership is not a question here
        rows.append(_row("train on real (TRTR)", seed, base, None, None, 0))
        for label, cfg in (
            ("CGAN (non-private)", CGANConfig(epsilon=None, steps=BENCH_NON_PRIVATE_STEPS, seed=seed, width=width)),
            (f"DP-CGAN (ε={epsilon:g})", CGANConfig(epsilon=epsilon, seed=seed, width=width)),
        ):
            gan, synthetic = synthesize(real, cfg)
            ev = evaluate_release(real, synthetic, seed=seed, extractor=extractor)
            rows.append(_row(label, seed, ev, gan, gan.wall_seconds, synthetic.images.size))
            if progress:
                progress(f"seed {seed}: {label}: TSTR AUROC {ev['tstr']['cnn']['auroc']:.3f}")
        control = positive_control(real.train, real.val, real.n_classes, seed=seed)
        rows.append(
            {
                "label": "MIA positive control (CGAN, 8 images)",
                "seed": seed,
                "figures": {"MIA AUC": control["auc"], "MIA null 95 %": control["null_auc_95pct"]},
            }  # fmt: skip
        )
    return rows


def _row(label: str, seed: int, ev: dict[str, Any], gan: CGANResult | None, wall: float | None, pixels: int) -> dict:
    cnn, lr, mia = ev["tstr"]["cnn"], ev["tstr"]["logreg"], ev["membership"]
    privacy = {} if gan is None else public_privacy(gan.privacy)
    figures = {
        "TSTR AUROC (cnn)": cnn["auroc"],
        "accuracy": cnn["accuracy"],
        "precision": cnn["precision"],
        "recall": cnn["recall"],
        "F1": cnn["f1"],
        "TSTR AUROC (logreg)": lr["auroc"],
        "Fréchet distance": ev["frechet"],
        "ε (image)": privacy.get("epsilon"),
        "ε (patient, group bound)": privacy.get("patient_epsilon_max"),
        "MIA AUC": mia.get("auc"),
        "MIA null 95 %": mia.get("null_auc_95pct"),
        "released kB": pixels / 1000 if pixels else None,  # uint8 pixels of the released set (before compression)
        "generator training s": wall,
    }
    return {"label": label, "seed": seed, "figures": {k: v for k, v in figures.items() if v is not None}}


def bench_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per label: each figure's mean and 95 % CI half-width over seeds."""
    from privmed.bench.stats import mean_ci

    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        figs = out.setdefault(r["label"], {})
        for k, v in r["figures"].items():
            if v is not None and math.isfinite(v):
                figs.setdefault(k, []).append(float(v))
    return [
        {"label": label, "figures": {k: dict(zip(("mean", "ci95"), mean_ci(v)), n=len(v)) for k, v in figs.items()}}
        for label, figs in out.items()
    ]


COLUMNS = (
    ("Performance", ("TSTR AUROC (cnn)", "accuracy", "precision", "recall", "F1", "TSTR AUROC (logreg)")),
    ("Utility (distribution)", ("Fréchet distance",)),
    ("Privacy", ("ε (image)", "ε (patient, group bound)", "MIA AUC", "MIA null 95 %")),
    ("Communication", ("released kB",)),
    ("Runtime", ("generator training s",)),
)


def bench_table(summary: list[dict[str, Any]]) -> list[str]:
    """Markdown: one row per label, the review's columns, mean ± 95 % CI."""

    def cell(f: dict[str, Any] | None) -> str:
        if f is None:
            return "–"
        return f"{f['mean']:.3f}" + ("" if f["ci95"] != f["ci95"] else f" ± {f['ci95']:.3f}")

    names = [n for _, group in COLUMNS for n in group]
    lines = ["| row | " + " | ".join(f"{g}: {n}" for g, group in COLUMNS for n in group) + " |"]
    lines.append("|" + "---|" * (len(names) + 1))
    for r in summary:
        lines.append(f"| {r['label']} | " + " | ".join(cell(r["figures"].get(n)) for n in names) + " |")
    return lines


def run_bench(*, runs_dir: str | Path, seeds: int, first_seed: int = 0, progress: Any = None) -> Path:
    """``privmed bench --suite synthetic``: rows over seeds, written to ``<runs_dir>/bench-synthetic``."""
    import json

    from privmed.files import private_dir, private_writer

    rows = bench_rows(seeds=seeds, first_seed=first_seed, progress=progress)
    summary = bench_summary(rows)
    out = private_dir(Path(runs_dir) / "bench-synthetic")
    with private_writer(out / "results.json", "w") as fh:
        fh.write(json.dumps(rows, indent=2, default=float))
    with private_writer(out / "summary.json", "w") as fh:
        fh.write(json.dumps({"seeds": seeds, "rows": summary}, indent=2, default=float))
    text = [
        f"# DP-CGAN synthetic data (phantom, {seeds} seeds; mean ± 95 % CI)",
        "",
        "TSTR: classifier trained on 512 synthetic images, tested on the real test split; TRTR: trained on the real "
        "training split. MIA: distance to the closest synthetic image, patient level, members = training patients, "
        "non-members = validation patients; its null is the 95th percentile of the permuted-label AUC.",
        "",
        *bench_table(summary),
        "",
    ]
    with private_writer(out / "report.md", "w") as fh:
        fh.write("\n".join(text))
    return out
