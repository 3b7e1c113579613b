"""``privmed ...``: a thin CLI; each command calls one public library function."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from privmed.errors import PrivmedError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Privacy-preserving deep learning across hospitals: train, measure, audit.",
    pretty_exceptions_show_locals=False,  # a traceback's local variables held a site's HMAC key
)
console = Console(stderr=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A PrivmedError becomes one line on stderr and exit code 2, no traceback."""
    try:
        yield
    except PrivmedError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def round_progress(label: str) -> Iterator:
    """A rich progress bar; yields a callback (round, total, metrics)."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[m]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None, m="")

        def update(rnd: int, total: int, metrics: dict) -> None:
            shown = " ".join(f"{k}={v:.3f}" for k, v in list(metrics.items())[:2])
            bar.update(task, completed=rnd, total=total, m=shown)

        yield update


def parse_key_values(items: list[str]) -> dict:
    """``["epsilon=3", "unit=patient"]`` -> ``{"epsilon": 3, "unit": "patient"}`` (TOML literals, else strings)."""
    import tomllib

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PrivmedError(f"--privacy-opt and --opt expect key=value, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


@app.command()
def train(
    protocol: str | None = typer.Option(
        None,
        help="centralised | single | ensemble | swt | cwt | fedavg | dssgd | he-fedavg | secagg-fedavg | snt | fnt",
    ),
    sites: int | None = typer.Option(None, help="number of sites (hospitals)"),
    split: str | None = typer.Option(None, help="natural | iid | dirichlet:<alpha> | quantity:<beta>"),
    rounds: int | None = typer.Option(None, help="rounds (cycles for CWT)"),
    epochs: int | None = typer.Option(None, help="local epochs per round / per site visit"),
    lr: float | None = typer.Option(None, help="learning rate (Adam)"),
    batch_size: int | None = typer.Option(None, help="batch size"),
    norm_ratio: float | None = typer.Option(
        None, help="reject a site's update whose norm exceeds this many times the other sites' median (default 100)"
    ),
    seed: int | None = typer.Option(None, help="run seed (same config + seed = same metrics)"),
    model: str | None = typer.Option(None, help="cnn | densenet121 | unet | seg-cnn"),
    task: str | None = typer.Option(None, help="classification | segmentation"),
    dataset: str | None = typer.Option(None, help="phantom | medmnist:<path.npz>"),
    image_size: int | None = typer.Option(None, help="phantom image size"),
    patients_scale: int | None = typer.Option(
        None, help="phantom: multiply each site's patient count (default 60, 45, 30, 15)"
    ),
    order: str | None = typer.Option(None, help="CWT visiting order: fixed | shuffled"),
    site: int | None = typer.Option(None, help="which site trains alone (protocol single)"),
    opt: list[str] = typer.Option(
        [],
        "--opt",
        help="protocol option key=value (repeatable), e.g. theta_u=0.1 for dssgd, threshold=3 for secagg-fedavg",
    ),
    privacy: str | None = typer.Option(None, help="privacy mechanism (see `privmed mechanisms`); default none"),
    privacy_opt: list[str] = typer.Option([], "--privacy-opt", help="mechanism parameter key=value (repeatable)"),
    epsilon: float | None = typer.Option(
        None, help="DP target ε (noise calibrated for the planned steps); same as --privacy-opt epsilon=<ε>"
    ),
    noise_multiplier: float | None = typer.Option(
        None, help="DP noise multiplier σ; same as --privacy-opt noise_multiplier=<σ>"
    ),
    name: str | None = typer.Option(None, help="run name (directory under --runs-dir)"),
    config: Path | None = typer.Option(None, "--config", help="TOML run config; flags override it"),
    runs_dir: Path = typer.Option(Path("runs"), help="where runs are written"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its last finished round"),
    reproducible_noise: bool = typer.Option(
        False,
        "--reproducible-noise",
        help="derive DP noise from the run seed (tests, debugging): the result is marked NOT private",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run of the same name"),
) -> None:
    """Train one protocol and write runs/<name>/result.json."""
    from privmed import config as cfgmod
    from privmed.engine.session import resolve
    from privmed.run import run

    with user_errors():
        base = cfgmod.load_toml(config) if config else cfgmod.RunConfig()
        options = dict(base.options)
        if order is not None:
            options["order"] = order
        if site is not None:
            options["site"] = site
        options.update(parse_key_values(opt))
        priv = dict(base.privacy)
        if privacy is not None:
            priv["mechanism"] = privacy
        priv.update(parse_key_values(privacy_opt))
        priv.update({k: v for k, v in (("epsilon", epsilon), ("noise_multiplier", noise_multiplier)) if v is not None})
        cfg = cfgmod.replace(
            base,
            protocol=protocol,
            seed=seed,
            model=model,
            task=task,
            name=name,
            options=options,
            privacy=priv,
            reproducible_noise=reproducible_noise or None,
            **{
                "data.sites": sites,
                "data.split": split,
                "data.dataset": dataset,
                "data.image_size": image_size,
                "data.patients_scale": patients_scale,
                "train.rounds": rounds,
                "train.local_epochs": epochs,
                "train.lr": lr,
                "train.batch_size": batch_size,
                "train.norm_ratio": norm_ratio,
            },
        )
        resolve(cfg)  # names, options and the protocol–mechanism pairing, before anything is written
        try:
            with round_progress(f"{cfg.protocol} ({cfg.data.split}, {cfg.data.sites} sites)") as update:
                result, path = run(cfg, runs_dir=runs_dir, progress=update, resume=resume, overwrite=overwrite)
        except KeyboardInterrupt:
            console.print(
                f"interrupted: finished rounds are checkpointed in {runs_dir / cfg.run_name}; "
                "run the same command with --resume to continue"
            )
            raise typer.Exit(130) from None
    table = Table(title=f"{cfg.run_name}: final test metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.performance["final"].items():
        table.add_row(k, "n/a" if v is None else f"{v:.4f}")
    table.add_row("bytes up / down", f"{result.communication['bytes_up']:,} / {result.communication['bytes_down']:,}")
    if result.privacy.get("epsilon") is not None:
        table.add_row(
            f"ε ({result.privacy.get('unit', '?')}-level, δ={result.privacy.get('delta', 0):g})",
            f"{result.privacy['epsilon']:.3f}",
        )
        table.add_row("guarantee", str(result.privacy.get("guarantee", "")))
    table.add_row("wall seconds", f"{result.runtime['wall_seconds']:.1f}")
    if result.reliability["rejected_updates"]:
        table.add_row("rejected updates", str(len(result.reliability["rejected_updates"])))
    Console().print(table)
    console.print(f"wrote {path}")


@app.command()
def mechanisms() -> None:
    """List the protocols and privacy mechanisms by name."""
    from privmed.options import describe
    from privmed.privacy.registry import MECHANISMS
    from privmed.protocols.registry import PROTOCOLS

    table = Table(title="protocols (--protocol NAME --opt KEY=VALUE)")
    for col in ("protocol", "review key", "schedule", "options"):
        table.add_column(col)
    for name, spec in PROTOCOLS.items():
        table.add_row(name, spec.technique, spec.schedule, describe(spec.options))
    Console().print(table)
    Console().print("privacy mechanisms: " + ", ".join(MECHANISMS))


@app.command()
def bench(
    runs_dir: Path = typer.Option(Path("runs"), help="results go to <runs-dir>/bench"),
    seed: int = typer.Option(0, help="first seed; each row runs with this seed and the next --seeds - 1"),
    seeds: int | None = typer.Option(None, min=1, help="runs per row (default: the suite's, 3 or 5)"),
    rounds: int | None = typer.Option(None, help="override the suite's number of rounds"),
    suite: str = typer.Option(
        "default", help="default (make bench: references + one row per family) | review (every row) | privacy (ε sweep)"
    ),
    resume: bool = typer.Option(False, "--resume", help="keep the rows an interrupted bench finished; run the rest"),
    jobs: int = typer.Option(min(2, os.cpu_count() or 1), min=1, help="rows run at once, each in its own process"),
) -> None:
    """Run a suite over several seeds; write results.json, summary.json (mean ± 95 % CI), report.md and plots."""
    from privmed.bench.suite import SUITES, run_suite, suite_attacks, suite_rows

    with user_errors():
        rows = suite_rows(suite, seed=seed, rounds=rounds)
        try:
            out = run_suite(
                runs_dir=runs_dir,
                seed=seed,
                rounds=rounds,
                console=console,
                rows=rows,
                resume=resume,
                attacks=suite_attacks(suite),
                jobs=jobs,
                row_progress=round_progress,
                seeds=seeds or SUITES[suite],
            )
        except KeyboardInterrupt:
            console.print(
                f"interrupted: finished rows are kept in {runs_dir / '.bench.partial'}; "
                "run the same command with --resume to continue"
            )
            raise typer.Exit(130) from None
    import json

    summary = json.loads((out / "summary.json").read_text())
    table = Table(title=f"privmed bench: mean ± 95 % CI over {summary['seeds']} seed(s) (full report: report.md)")
    for col in ("row", "technique", "test AUROC", "balanced accuracy", "kB/site/round", "wall s"):
        table.add_column(col)
    for r in summary["rows"]:
        f = r["figures"]

        def cell(name: str, f=f) -> str:
            if name not in f:
                return "–"
            half = f[name]["ci95"]
            return f"{f[name]['mean']:.3f}" + ("" if half != half else f" ± {half:.3f}")

        table.add_row(
            r["label"],
            r["technique"],
            cell("test AUROC"),
            cell("balanced accuracy"),
            cell("kB/site/round"),
            cell("wall"),
        )
    Console().print(table)
    significant = [c for c in summary["comparisons"] if c["significant"]]
    for c in significant:
        console.print(f"{c['row']} vs {c['reference']}: {c['figure']} {c['difference']:+.3f} (p = {c['p']:.3f})")
    console.print(f"wrote {out / 'report.md'}, {out / 'summary.json'}, {out / 'results.json'}, plots")


@app.command()
def audit(
    run_dir: Path = typer.Argument(..., help="a run directory written by `privmed train` (runs/<name>)"),
    attack: list[str] = typer.Option(
        [], "--attack", help="attack to run (repeatable; default: every attack that applies)"
    ),
    shadows: int = typer.Option(8, help="LiRA shadow models"),
) -> None:
    """Run the attacks that apply to a run; write audit.json beside its result.json."""
    from privmed.audit import audit_run

    with user_errors():
        result, path = audit_run(run_dir, attacks=tuple(attack) or None, n_shadows=shadows)
    table = Table(title=f"{result.run}: audit ({result.protocol}, privacy: {result.mechanism})")
    table.add_column("attack")
    table.add_column("measured")
    for name, value in {**result.leakage(), **result.security()}.items():
        table.add_row(name, f"{value:.3f}")
    for name, r in result.results.items():
        table.add_row(f"{name} ({result.seconds[name]:.0f} s)", r.get("attack", ""))
    for name, why in result.not_applicable.items():
        table.add_row(name, f"not applicable: {why}")
    Console().print(table)
    console.print(f"wrote {path}")


@app.command()
def budget(
    ledger: str | None = typer.Option(
        None, help="the budget ledger's URL, sqlite:///<absolute path> (default: ledger.db in the per-user data folder)"
    ),
    limit: float | None = typer.Option(None, help="ε limit per patient: show what is left"),
    delta: float = typer.Option(1e-5, help="δ at which spent ε is stated"),
    top: int = typer.Option(20, help="patients listed (most spent first)"),
    new_key: Path | None = typer.Option(
        None, "--new-key", help="create the hospitals' shared pseudonym key file and exit"
    ),
    release: str | None = typer.Option(
        None, "--release", help="drop the budget hold a killed run left (its run name) and exit"
    ),
) -> None:
    """Per-patient privacy spent across all DP runs and hospitals, and what is left under --limit."""
    from privmed.privacy.ledger import Ledger, budget_report, default_url, sqlite_path
    from privmed.privacy.pseudonym import new_key as make_key

    ledger = ledger or default_url()
    with user_errors():
        if new_key is not None:
            console.print(f"wrote {make_key(new_key)}; give it to every hospital (ledger_key=...)")
            return
        rep = budget_report(ledger, limit=limit, delta=delta)
        if release is not None:
            if release not in rep["holds"]:
                raise PrivmedError(
                    f"no run {release!r} holds budget in {sqlite_path(ledger)}; "
                    f"holding: {', '.join(rep['holds']) or 'none'}"
                )
            Ledger(ledger).release(run=release)
            console.print(f"dropped the hold of {release!r} (its charges stay)")
            return
    t = rep["total"]
    table = Table(title=f"privacy spent per patient ({t['patients']} patients, {t['runs']} runs, δ={delta:g})")
    for col in ("patient (pseudonym)", "ε spent", "left", "runs", "sites"):
        table.add_column(col, justify="left" if col.startswith("patient") else "right")
    for r in rep["patients"][:top]:
        table.add_row(
            r["patient"][:16],
            f"{r['epsilon']:.3f}",
            "-" if r["remaining"] is None else f"{r['remaining']:.3f}",
            str(r["runs"]),
            str(r["sites"]),
        )
    Console().print(table)
    line = f"total: {t['patients']} patients, ε max {t['epsilon_max']:.3f}, mean {t['epsilon_mean']:.3f}"
    if limit is not None:
        line += f"; limit {limit:g}: {t['patients_over_limit']} over, least left {t['remaining_min']:.3f}"
    Console().print(line)
    for run_name, h in rep["holds"].items():  # running runs (or killed ones: privmed budget --release NAME)
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(h["since"]))
        Console().print(f"hold: run {run_name!r} has reserved its plan for {h['patients']} patients since {since}")


@app.command()
def deid(
    in_dir: Path = typer.Argument(..., help="folder of DICOM files (read only, never modified)"),
    out_dir: Path = typer.Argument(..., help="where the de-identified files go (OUT/<patient>/<series>/<sop>.dcm)"),
    key: Path = typer.Option(..., "--key", help="the site's secret key file (make one: privmed budget --new-key PATH)"),
    retain_modified_dates: bool = typer.Option(
        False, help="Retain Longitudinal Temporal Information with Modified Dates (keyed per-patient shift)"
    ),
    retain_patient_characteristics: bool = typer.Option(
        False, help="Retain Patient Characteristics (age, sex, size, weight, ...)"
    ),
    clean_descriptors: bool = typer.Option(
        False, help="Clean Descriptors (keep descriptions, scrubbed) instead of removing them"
    ),
    allow_burned_in: bool = typer.Option(
        False, help="also write images flagged for burned-in annotation (pixels are not cleaned)"
    ),
    reid_table: Path | None = typer.Option(None, help="write the encrypted re-identification table here"),
) -> None:
    """De-identify DICOM files (PS3.15 Annex E Basic Profile, keyed pseudonyms); audit log beside OUT_DIR."""
    from privmed.data.dicom_deid import deidentify_tree
    from privmed.data.dicom_profile import Options

    with user_errors():
        s = deidentify_tree(
            in_dir,
            out_dir,
            key_file=key,
            allow_burned_in=allow_burned_in,
            reid_table=reid_table,
            options=Options(
                retain_modified_dates=retain_modified_dates,
                clean_descriptors=clean_descriptors,
                retain_patient_characteristics=retain_patient_characteristics,
            ),
        )
    for path, why in s.skipped + s.refused:
        console.print(f"left out {path}: {why}", highlight=False, soft_wrap=True)
    console.print(
        f"wrote {s.written} of {s.files} files ({s.patients} patients, {s.series} series) to {s.out_dir}; "
        f"audit: {s.audit_log}" + (f"; re-identification table: {s.reid_table}" if s.reid_table else ""),
        highlight=False,
    )


def crash_log(exc: BaseException) -> Path:
    """Write the traceback of an unexpected error (no local variables) to an owner-only file; return its path."""
    import traceback

    from privmed.files import data_home, private_dir, private_writer

    logs = private_dir(data_home() / "logs")
    path = logs / f"crash-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    with private_writer(path, "w") as fh:
        fh.write(f"privmed {' '.join(sys.argv[1:])}\n")
        fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return path


def main() -> None:
    """The ``privmed`` command: a user error is one line and exit 2 (:func:`user_errors`); an unexpected error one
    line, exit 1, and the path of a log file holding its traceback (never local variables, which held keys)."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; nothing was written for the unfinished run")
        sys.exit(130)
    except Exception as exc:  # a bug: one line here, the traceback in a file
        first = (str(exc).splitlines() or [""])[0][:300]
        try:
            where = f"the traceback is in {crash_log(exc)}"
        except OSError as log_error:
            where = f"and its traceback could not be written ({log_error.strerror})"
        console.print(
            f"[red]unexpected error[/red] (a bug in privmed): {type(exc).__name__}: {first}; {where}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
