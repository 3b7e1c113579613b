"""``privmed bench``: run the default suite and write results.json, report.md and a plot.

Every row runs on the same phantom federation (built once), the same model
and the same seed. Rows are (label, RunConfig) pairs, so later mechanisms add
rows here rather than new code paths.
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

from privmed.bench.privacy import dp_rows, privacy_section, privacy_suite, write_epsilon_plot
from privmed.bench.report import write_plot, write_privacy_plot, write_report
from privmed.config import RunConfig, TrainSettings
from privmed.engine.result import Progress, json_default

DEFAULT_ROUNDS = 10
# A progress display for one row: label -> context manager yielding the row's Progress callback (or None)
RowProgress = Callable[[str], AbstractContextManager[Progress | None]]


def default_suite(*, seed: int = 0, rounds: int | None = None, n_sites: int = 4) -> list[tuple[str, RunConfig]]:
    train = TrainSettings(rounds=rounds or DEFAULT_ROUNDS, local_epochs=1)
    base = RunConfig(seed=seed, train=train)
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
    rows += dp_rows(base)
    return rows


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


def suite_attacks(suite: str) -> tuple[str, ...] | None:
    """The privacy sweep audits leakage only (its plot is leakage and utility against ε); the default suite audits
    all."""
    return ("membership", "inversion") if suite == "privacy" else None


def suite_rows(suite: str, *, seed: int = 0, rounds: int | None = None) -> list[tuple[str, RunConfig]]:
    """``default`` (every protocol, DP rows) or ``privacy`` (the privacy–utility sweep)."""
    from privmed.errors import unknown_name

    if suite == "default":
        return default_suite(seed=seed, rounds=rounds)
    if suite == "privacy":
        return privacy_suite(RunConfig(seed=seed, train=TrainSettings(rounds=rounds or DEFAULT_ROUNDS, local_epochs=1)))
    raise unknown_name("suite", suite, ["default", "privacy"])


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
) -> Path:
    """Run ``rows`` (default: :func:`default_suite`) and write the bench directory atomically.

    Finished rows stay in ``<runs_dir>/.bench.partial`` until the whole suite
    is done; ``resume`` keeps those whose config matches and runs the rest. A
    row whose audit fails keeps its result, with the error in place of the
    audit's columns. ``attacks`` narrows each row's audit (default: all of
    :data:`privmed.audit.BENCH_ATTACKS`). ``jobs`` > 1 runs that many rows at
    once, each in its own process (every row is seeded, so its numbers do not
    depend on what runs beside it; its wall time may, a little). ``row_progress``
    shows a serial row's rounds (the CLI passes a progress bar).
    """
    rows = rows or default_suite(seed=seed, rounds=rounds)
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
        by_index.update(_run_parallel(rows, todo, work, attacks, jobs, console))
    else:
        for i in todo:
            label, cfg = rows[i]
            with (row_progress or _no_progress)(f"{label:<14}") as update:
                by_index[i] = run_row(label, cfg, work, attacks, progress=update, console=console)
    results = [by_index[i] for i in range(len(rows))]
    (work / "results.json").write_text(json.dumps(results, indent=2))
    write_report(results, work / "report.md", plot_name="validation.png")
    write_plot(results, work / "validation.png")
    write_privacy_plot(results, work / "privacy_utility.png")
    if write_epsilon_plot(results, work / "epsilon_utility.png"):
        with open(work / "report.md", "a") as f:
            f.write("\n".join(privacy_section(results, "epsilon_utility.png")) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    return out


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
    from privmed.engine.session import build_federation
    from privmed.errors import PrivmedError
    from privmed.run import execute

    if (cfg.data, cfg.seed) not in _FEDERATIONS:
        _FEDERATIONS[cfg.data, cfg.seed] = build_federation(cfg.data, cfg.seed)
    fed = _FEDERATIONS[cfg.data, cfg.seed]
    result = execute(cfg, progress=progress, fed=fed)
    try:
        audit = bench_audit(cfg, fed, result, attacks or BENCH_ATTACKS)  # Privacy and Security columns, measured
    except PrivmedError as exc:
        (console or Console(stderr=True)).print(
            f"[yellow]warning[/]: {label}: the audit failed ({exc}); the row is kept without its attack columns"
        )
        result.privacy["audit_error"] = str(exc)
        audit = None
    row_dir = work / cfg.run_name
    row_dir.mkdir(parents=True, exist_ok=True)
    if audit is not None:
        result.privacy["leakage"], result.security["attacks"] = audit.leakage(), audit.security()
        (row_dir / "audit.json").write_text(json.dumps(audit.to_dict(), indent=2, default=float))
    result.save(row_dir)  # result.json last: it marks the row finished
    return {"label": label, **json.loads((row_dir / "result.json").read_text())}


def _run_parallel(
    rows: list[tuple[str, RunConfig]],
    todo: list[int],
    work: Path,
    attacks: tuple[str, ...] | None,
    jobs: int,
    console: Console,
) -> dict[int, dict[str, Any]]:
    """Rows ``todo`` in ``jobs`` worker processes (spawned: a forked torch can hang); a line per finished row."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_row, *rows[i], work, attacks): i for i in todo}
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


def _finished_row(row_dir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """A row's saved result if it finished with this very config, else None."""
    try:
        saved = json.loads((row_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    config = json.loads(json.dumps(cfg.to_dict(), default=json_default))  # as result.json wrote it
    return saved if saved.get("config") == config else None
