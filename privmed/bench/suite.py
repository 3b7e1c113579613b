"""``privmed bench``: run a suite over several seeds and write results.json, summary.json, report.md and plots.

Rows are (label, RunConfig) pairs, so later mechanisms add rows here rather
than new code paths. Every row runs once per seed (``seeds``: the suite's
default, or ``--seeds N``); all rows share each seed's phantom cohort, so
rows are compared paired by seed (:mod:`privmed.bench.stats`): the report
gives each figure's mean and 95 % CI and which differences to the reference
rows (:data:`REFERENCES`) are significant.

Suites: ``default`` (``make bench``: the reference points and one row per
family of protocol, 3 seeds, within ~5 minutes on 2 cores), ``review`` (every
row of the review's tables and the CWT ↔ FL crossover, 5 seeds, the reference
run), ``privacy`` (the ε sweep and DSSGD over θu), ``crossover`` (the
crossover sweep alone, one seed), ``synthetic`` (DP-CGAN against a
non-private CGAN and train-on-real: :func:`privmed.synthetic.pipeline.run_bench`).

``--data 3d`` (:func:`volume_suite`) runs the default suite's protocol rows,
plus P3SGD, on the phantom's 3-D volumes (:data:`VOLUME_DATA`), with the
volume budget (:data:`VOLUME_ROUNDS`) and the same audit, within 10 minutes
on 2 cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rich.console import Console

from privmed.bench import crossover
from privmed.bench.html import write_html
from privmed.bench.privacy import dp_rows, privacy_section, privacy_suite, write_epsilon_plot
from privmed.bench.report import write_plot, write_privacy_plot, write_report, write_short_report
from privmed.bench.stats import REFERENCES, compare, fault_effects, summarise
from privmed.config import DataConfig, RunConfig, TrainSettings
from privmed.engine.result import Progress, json_default

DEFAULT_ROUNDS = None  # the training budget of TrainSettings (past the default phantom's validation plateau)
# A progress display for one row: label -> context manager yielding the row's Progress callback (or None)
RowProgress = Callable[[str], AbstractContextManager[Progress | None]]


def _base(seed: int, rounds: int | None) -> RunConfig:
    train = TrainSettings(rounds=rounds or TrainSettings().rounds, local_epochs=1)
    return RunConfig(seed=seed, train=train)


def default_suite(*, seed: int = 0, rounds: int | None = None) -> list[tuple[str, RunConfig]]:
    """``make bench``: the two references, the smallest site alone, CWT, SecAgg+ FedAvg, CWT with DP-SGD (ε = 3)."""
    base = _base(seed, rounds)
    rows = [
        (label, dataclasses.replace(base, protocol=label, name=label)) for label in ("centralised", "fedavg", "cwt")
    ]
    rows.insert(
        1, ("single site-3", dataclasses.replace(base, protocol="single", options={"site": 3}, name="single-site3"))
    )
    rows.append(
        (
            "secagg-fedavg",
            dataclasses.replace(base, protocol="secagg-fedavg", privacy={"mechanism": "secagg"}, name="secagg-fedavg"),
        )
    )
    rows.append(
        (
            "cwt + DP-SGD (sample, ε=3)",
            dataclasses.replace(
                base,
                protocol="cwt",
                name="cwt-dp-sgd-eps3",
                privacy={"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5},
            ),
        )
    )
    return rows


def review_suite(*, seed: int = 0, rounds: int | None = None, n_sites: int = 4) -> list[tuple[str, RunConfig]]:
    """Every row of the review's tables: each protocol, each encrypted variant, split learning, the DP rows, DSSGD;
    and the CWT ↔ FL crossover sweep (:mod:`privmed.bench.crossover`, its own small images and rounds, not audited)."""
    base = _base(seed, rounds)
    rows = [("centralised", dataclasses.replace(base, protocol="centralised", name="centralised"))]
    rows += [
        (f"single site-{i}", dataclasses.replace(base, protocol="single", options={"site": i}, name=f"single-site{i}"))
        for i in range(n_sites)
    ]
    rows += [
        (p, dataclasses.replace(base, protocol=p, name=p)) for p in ("ensemble", "swt", "cwt", "fedavg", "admission")
    ]
    rows += fault_rows(base)
    rows += encrypted_rows(base)
    rows += he_clstm_rows(base)
    rows += computing_on_encrypted_rows(base)
    rows += split_rows(base)
    rows += dp_rows(base)
    rows += crossover.crossover_rows(base)
    rows += privacy_net_rows(base)
    return rows


def computing_on_encrypted_rows(base: RunConfig) -> list[tuple[str, RunConfig]]:
    """Training on encrypted data (issue 14): MORE (Vizitiu 2019), the server trains poly-cnn on ciphertexts."""
    more = dataclasses.replace(base, protocol="more", model="poly-cnn", privacy={"mechanism": "more"}, name="more")
    return [("more (Vizitiu 2019)", more)]


# NoPeek's λ in the bench row: the weight of dCor(x, activations) beside the cross-entropy at the site
NOPEEK_LAMBDA = 1.0


def split_rows(base: RunConfig) -> list[tuple[str, RunConfig]]:
    """Split learning (Jeon et al. 2019; issue 14): labels at the server, the U-shape, NoPeek.

    Same rounds, local epochs and batch size as the FedAvg and CWT rows: every site's images pass once per round
    through the whole network (equal compute, counted in sample-gradients).
    """
    return [
        ("split", dataclasses.replace(base, protocol="split", name="split")),
        ("split U-shaped", dataclasses.replace(base, protocol="split", options={"ushaped": 1}, name="split-ushaped")),
        (
            f"split + NoPeek λ={NOPEEK_LAMBDA:g}",
            dataclasses.replace(base, protocol="split", options={"nopeek": NOPEEK_LAMBDA}, name="split-nopeek"),
        ),
    ]


# Privacy-Net's adversarial weight in the review row (the trade-off over λ: benchmarks/privacy_net_tradeoff.py)
PRIVACY_NET_LAM = 1.0


def privacy_net_rows(base: RunConfig) -> list[tuple[str, RunConfig]]:
    """Privacy-Net (issue 15) and its raw-image reference: the same FedAvg rounds, a U-Net segmenting raw images.

    Segmentation rows: their Dice compares with each other, not with the classification rows' AUROC; the
    Privacy column is the fresh attacker's re-identification (audit ``reidentification``) with its raw-image
    positive control and chance.
    """
    seg = dataclasses.replace(base, task="segmentation")
    return [
        ("fedavg unet (segmentation, raw images)", dataclasses.replace(seg, model="unet", name="fedavg-unet-seg")),
        (
            f"privacy-net λ={PRIVACY_NET_LAM:g}",
            dataclasses.replace(
                seg,
                protocol="privacy-net",
                model="privacy-net",
                options={"lam": PRIVACY_NET_LAM},
                name="privacy-net",
            ),
        ),
    ]


# The faults of the Reliability column (engine/faults.py): each site crashes for a round with probability 0.2,
# answers 5 s late (inside a 10 s deadline) with 0.2, loses its reply with 0.1, corrupts it with 0.05.
BENCH_FAULTS = "crash=0.2,straggle=0.2:5s,drop=0.1,corrupt=0.05,deadline=10s"


def fault_rows(base: RunConfig) -> list[tuple[str, RunConfig]]:
    """FedAvg, CWT and the admission ensemble under injected faults; the report compares each with its fault-free
    row."""
    return [
        (f"{p} + faults", dataclasses.replace(base, protocol=p, name=f"{p}-faults", faults=BENCH_FAULTS))
        for p in ("fedavg", "cwt", "admission")
    ]


# Packed Paillier costs ~2.3 s of encryption per site per round on the default CNN (14k parameters,
# 2048-bit key; measured by benchmarks/he_cost.py): its row runs fewer rounds to keep `make bench` short.
PAILLIER_ROUNDS = 3


def encrypted_rows(base: RunConfig) -> list[tuple[str, RunConfig]]:
    """Encrypted updates (issue 4): HE-FedAvg, SecAgg+ FedAvg, SNT and FNT on the same data and seed."""
    paillier = dataclasses.replace(base.train, rounds=min(PAILLIER_ROUNDS, base.train.rounds))
    return [
        (
            "he-fedavg ckks",
            dataclasses.replace(base, protocol="he-fedavg", privacy={"mechanism": "he-ckks"}, name="he-fedavg-ckks"),
        ),
        (
            f"he-fedavg paillier ({paillier.rounds} rounds)",
            dataclasses.replace(
                base,
                protocol="he-fedavg",
                privacy={"mechanism": "he-paillier"},
                train=paillier,
                name="he-fedavg-paillier",
            ),
        ),
        (
            "secagg-fedavg",
            dataclasses.replace(base, protocol="secagg-fedavg", privacy={"mechanism": "secagg"}, name="secagg-fedavg"),
        ),
        ("snt", dataclasses.replace(base, protocol="snt", privacy={"mechanism": "aes-gcm"}, name="snt")),
        ("fnt", dataclasses.replace(base, protocol="fnt", privacy={"mechanism": "aes-gcm"}, name="fnt")),
    ]


def he_clstm_rows(base: RunConfig) -> list[tuple[str, RunConfig]]:
    """HE-CLSTM (issue 14): trained centrally on follow-up sequences; the row adds CKKS-encrypted inference
    (:func:`privmed.privacy.he_inference.bench_encrypted_inference`) on its test sequences."""
    data = dataclasses.replace(base.data, dataset="phantom:v2?sequence=4", image_size=16)
    return [
        (
            "he-clstm (CKKS inference)",
            dataclasses.replace(base, protocol="centralised", model="he-clstm", data=data, name="he-clstm-ckks"),
        )
    ]


def suite_attacks(suite: str) -> tuple[str, ...] | None:
    """The privacy sweep audits leakage only (its plot is leakage and utility against ε); the default suite audits
    all."""
    return ("membership", "inversion") if suite == "privacy" else None


# suite -> its default number of seeds; "synthetic" (DP-CGAN's TSTR, ε and MIA) runs privmed.synthetic.pipeline
SUITES = {"default": 3, "review": 5, "privacy": 3, "crossover": 1, "synthetic": 3}

# --data 3d: the phantom's volumes (one per patient visit, the 2-D phantom's cohort, sites and scanners), at the size
# and budget that keep the rows and their audits within 10 minutes on 2 cores (README, "Bench on 3-D volumes").
VOLUME_SIZE = 16
VOLUME_DATA = DataConfig(dataset="phantom:v2?volume=1", image_size=VOLUME_SIZE)
VOLUME_ROUNDS = 20
VOLUME_TRAIN = {"batch_size": 16, "lr": 2e-3}
VOLUME_SEEDS = 1
DATA_KINDS = ("2d", "3d")


def volume_suite(*, seed: int = 0, rounds: int | None = None) -> list[tuple[str, RunConfig]]:
    """The default suite's rows and centralised P3SGD (patient-level DP, ε = 3) on :data:`VOLUME_DATA`."""
    base = _base(seed, rounds or VOLUME_ROUNDS)
    base = dataclasses.replace(base, data=VOLUME_DATA, train=dataclasses.replace(base.train, **VOLUME_TRAIN))
    rows = default_suite(seed=seed, rounds=base.train.rounds)
    rows.append(
        (
            "centralised + P3SGD (patient, ε=3)",
            dataclasses.replace(
                base,
                protocol="centralised",
                name="centralised-p3sgd-eps3",
                privacy={"mechanism": "p3sgd", "epsilon": 3.0, "delta": 1e-5},
            ),
        )
    )
    return [
        (f"{label} [3-D]", dataclasses.replace(cfg, data=base.data, train=base.train, name=f"{cfg.run_name}-3d"))
        for label, cfg in rows
    ]


def suite_rows(
    suite: str, *, seed: int = 0, rounds: int | None = None, data: str = "2d"
) -> list[tuple[str, RunConfig]]:
    """``default`` (make bench), ``review`` (every row) or ``privacy`` (the privacy–utility sweep); ``data="3d"``: the
    default suite's rows on volumes (:func:`volume_suite`)."""
    from privmed.errors import PrivmedError, unknown_name

    if data not in DATA_KINDS:
        raise unknown_name("bench data", data, DATA_KINDS)
    if data == "3d":
        if suite != "default":
            raise PrivmedError(f"--data 3d runs the default suite's rows on volumes; leave out --suite {suite}")
        return volume_suite(seed=seed, rounds=rounds)
    if suite == "default":
        return default_suite(seed=seed, rounds=rounds)
    if suite == "review":
        return review_suite(seed=seed, rounds=rounds)
    if suite == "privacy":
        return privacy_suite(_base(seed, rounds))
    if suite == "crossover":
        return crossover.crossover_rows(_base(seed, rounds))
    if suite == "synthetic":
        from privmed.errors import PrivmedError

        raise PrivmedError("the synthetic suite has no RunConfig rows: run privmed.synthetic.pipeline.run_bench")
    raise unknown_name("suite", suite, list(SUITES))


# The review suite towards 60 minutes on 2 cores (README, "Review suite"): every table row runs over all its seeds,
# but the crossover sweep's 64 points run on the first CROSSOVER_SEEDS of them (its figure is each cell's mean over
# seeds) and the backdoor audit, which trains the row a second time, on the first POISONING_SEEDS.
REVIEW_BUDGET = {"crossover_seeds": 2, "poisoning_seeds": 3}


def with_seeds(
    rows: list[tuple[str, RunConfig]], seeds: int, *, crossover_seeds: int | None = None
) -> list[tuple[str, RunConfig]]:
    """Each row once per seed (its config's seed, then the next ``seeds - 1``), row by row; run names say the seed.

    ``crossover_seeds``: the crossover sweep's rows run on at most that many of the seeds."""
    if seeds == 1:
        return list(rows)

    def n(cfg: RunConfig) -> int:
        return min(seeds, crossover_seeds) if crossover_seeds and crossover.is_sweep(cfg) else seeds

    return [
        (label, dataclasses.replace(cfg, seed=cfg.seed + k, name=f"{cfg.run_name}-s{cfg.seed + k}"))
        for label, cfg in rows
        for k in range(n(cfg))
    ]


def run_suite(
    *,
    runs_dir: str | Path = "runs",
    seed: int = 0,
    rounds: int | None = None,
    console: Console | None = None,
    rows: list[tuple[str, RunConfig]] | None = None,
    resume: bool = False,
    attacks: tuple[str, ...] | None = None,
    jobs: int = 1,
    row_progress: RowProgress | None = None,
    seeds: int = 1,
    references: tuple[str, ...] = REFERENCES,
    crossover_seeds: int | None = None,
    poisoning_seeds: int | None = None,
) -> Path:
    """Run ``rows`` (default: :func:`default_suite`) and write the bench directory atomically.

    Finished rows stay in ``<runs_dir>/.bench.partial`` until the whole suite
    is done; ``resume`` keeps those whose config matches and runs the rest. A
    row whose audit fails keeps its result, with the error in place of the
    audit's columns. ``attacks`` narrows each row's audit (default: all of
    :data:`privmed.audit.BENCH_ATTACKS`). ``jobs`` > 1 runs that many rows at
    once, each in its own process (every row is seeded, so its numbers do not
    depend on what runs beside it; its wall time may, a little). ``row_progress``
    shows a serial row's rounds (the CLI passes a progress bar). ``seeds``: runs
    per row (:func:`with_seeds`); ``references``: the rows the others are compared with. ``crossover_seeds`` and
    ``poisoning_seeds`` (:data:`REVIEW_BUDGET`): the crossover sweep's rows run, and the backdoor audit runs, on the
    first that many seeds only.
    """
    rows = with_seeds(rows or default_suite(seed=seed, rounds=rounds), seeds, crossover_seeds=crossover_seeds)

    def row_attacks(cfg: RunConfig) -> tuple[str, ...] | None:
        if poisoning_seeds is None or cfg.seed - seed < poisoning_seeds:
            return attacks
        from privmed.audit import BENCH_ATTACKS

        return tuple(a for a in attacks or BENCH_ATTACKS if a != "poisoning")

    out = Path(runs_dir) / "bench"
    work = Path(runs_dir) / ".bench.partial"
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    console = console or Console(stderr=True)
    by_index: dict[int, dict[str, Any]] = {}
    todo = []
    for i, (label, cfg) in enumerate(rows):
        done = _finished_row(work / cfg.run_name, cfg) if resume else None
        if done is not None:
            console.print(f"{label}: finished before the interruption, kept")
            by_index[i] = {"label": label, **done}
        else:
            todo.append(i)
    if jobs > 1 and len(todo) > 1:
        by_index.update(_run_parallel(rows, todo, work, [row_attacks(cfg) for _, cfg in rows], jobs, console))
    else:
        for i in todo:
            label, cfg = rows[i]
            with (row_progress or _no_progress)(f"{label:<14}") as update:
                by_index[i] = run_row(label, cfg, work, row_attacks(cfg), progress=update, console=console)
    results = [by_index[i] for i in range(len(rows))]
    (work / "results.json").write_text(json.dumps(results, indent=2))
    summary = {
        "seeds": seeds,
        "rows": summarise(results),
        "comparisons": compare(results, references),
        "reliability": fault_effects(results),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    write_outputs(results, summary, work)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    return out


def write_outputs(results: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> None:
    """report.html (everything, self-contained), report.md (the summary and links), details.md and the plots."""
    plain = [r for r in results if not crossover.is_crossover(r)]
    write_report(plain or results, out / "details.md", plot_name="validation.png", summary=summary)
    write_plot(plain or results, out / "validation.png")
    write_privacy_plot(plain or results, out / "privacy_utility.png")
    if write_epsilon_plot(results, out / "epsilon_utility.png"):
        with open(out / "details.md", "a") as f:
            f.write("\n".join(privacy_section(results, "epsilon_utility.png")) + "\n")
    plots = ["validation.png", "privacy_utility.png"]
    if crossover.write_crossover_plot(results, out / "crossover.png"):
        plots.append("crossover.png")
    write_short_report(results, summary, out / "report.md", plots=plots)
    write_html(results, out / "report.html", summary)


@contextlib.contextmanager
def _no_progress(label: str):
    yield None


_FEDERATIONS: dict[tuple, Any] = {}  # rows on the same data share one federation (per process)


def run_row(
    label: str,
    cfg: RunConfig,
    work: Path,
    attacks: tuple[str, ...] | None,
    *,
    progress=None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train one row, audit it, write ``work/<run>/`` (result.json last) and return its result dict."""
    from privmed.audit import BENCH_ATTACKS, bench_audit
    from privmed.engine.session import build_federation, model_spec
    from privmed.errors import PrivmedError
    from privmed.files import private_dir, private_writer
    from privmed.privacy.he_inference import bench_encrypted_inference
    from privmed.run import execute

    if (cfg.data, cfg.seed) not in _FEDERATIONS:
        _FEDERATIONS[cfg.data, cfg.seed] = build_federation(cfg.data, cfg.seed)
    fed = _FEDERATIONS[cfg.data, cfg.seed]
    result = execute(cfg, progress=progress, fed=fed)
    spec = model_spec(cfg, fed)
    bench_encrypted_inference(spec, result.predictor, fed, result)  # HE-CLSTM rows only
    try:
        # the crossover sweep measures time and bytes, not leakage: its rows are not audited
        audited = not crossover.is_sweep(cfg)
        audit = bench_audit(cfg, fed, result, attacks or BENCH_ATTACKS) if audited else None  # Privacy, Security
    except PrivmedError as exc:
        (console or Console(stderr=True)).print(
            f"[yellow]warning[/]: {label}: the audit failed ({exc}); the row is kept without its attack columns"
        )
        result.privacy["audit_error"] = str(exc)
        audit = None
    row_dir = private_dir(work / cfg.run_name)
    if audit is not None:
        result.privacy["leakage"], result.security["attacks"] = audit.leakage(), audit.security()
        with private_writer(row_dir / "audit.json", "w") as fh:
            fh.write(json.dumps(audit.to_dict(), indent=2, default=float))
    result.save(row_dir)  # result.json last: it marks the row finished
    return {"label": label, **json.loads((row_dir / "result.json").read_text())}


def _run_parallel(
    rows: list[tuple[str, RunConfig]],
    todo: list[int],
    work: Path,
    attacks: list[tuple[str, ...] | None],
    jobs: int,
    console: Console,
) -> dict[int, dict[str, Any]]:
    """Rows ``todo`` in ``jobs`` worker processes (spawned: a forked torch can hang), ``attacks[i]`` auditing row
    ``i``; a line per finished row."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        order = sorted(todo, key=lambda i: -_expected_cost(rows[i][1]))  # stable: suite order among equals
        futures = {pool.submit(run_row, *rows[i], work, attacks[i]): i for i in order}
        try:
            for n, fut in enumerate(as_completed(futures), 1):
                i = futures[fut]
                out[i] = r = fut.result()
                m = r["performance"]["metric"]
                console.print(
                    f"[{n}/{len(todo)}] {rows[i][0]}: {m} {r['performance']['final'].get(m, float('nan')):.3f}, "
                    f"{r['runtime']['wall_seconds']:.1f} s"
                )
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return out


def _expected_cost(cfg: RunConfig) -> float:
    """A rough relative cost of a row, to hand the workers the longest rows first (longest-processing-time-first
    scheduling: the short crossover runs, submitted last, fill the tail instead of one long row running alone on
    one core while the other waits). Measured in the review suite: a row on ``patients_scale`` times the patients
    costs about that many times a default row's steps (DP rows ~85 s, default rows ~10-45 s), a segmentation
    U-Net row ~90 s, a crossover run ~2 s."""
    if crossover.is_sweep(cfg):
        return 0.1
    return cfg.data.patients_scale * (2.0 if cfg.task == "segmentation" else 1.0) * (1.5 if cfg.privacy else 1.0)


def _finished_row(row_dir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """A row's saved result if it finished with this very config, else None."""
    try:
        saved = json.loads((row_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    config = json.loads(json.dumps(cfg.to_dict(), default=json_default))  # as result.json wrote it
    return saved if saved.get("config") == config else None
