"""``privmed ...``: a thin CLI; each command calls one public library function."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from privmed.errors import PrivmedError

if TYPE_CHECKING:
    from privmed.config import RunConfig

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


def config_from_flags(*, config: Path | None, **flags) -> RunConfig:
    """The RunConfig that ``privmed train``'s flags describe (``privmed run`` takes the same flags); None = keep."""
    from privmed import config as cfgmod

    f = flags
    base = cfgmod.load_toml(config) if config else cfgmod.RunConfig()
    options = dict(base.options)
    options.update({k: f[k] for k in ("order", "site") if f[k] is not None})
    options.update(parse_key_values(f["opt"]))
    priv = dict(base.privacy)
    if f["privacy"] is not None:
        priv["mechanism"] = f["privacy"]
    priv.update(parse_key_values(f["privacy_opt"]))
    priv.update({k: f[k] for k in ("epsilon", "noise_multiplier") if f[k] is not None})
    top = {k: f.get(k) for k in ("protocol", "seed", "model", "task", "name", "faults")}
    top["reproducible_noise"] = f.get("reproducible_noise") or None  # a flag: absent keeps the config file's
    data = {f"data.{k}": f[k] for k in ("sites", "split", "dataset", "image_size", "patients_scale")}
    train = {"train.rounds": f["rounds"], "train.local_epochs": f["epochs"], "train.lr": f["lr"]}
    train.update({"train.batch_size": f["batch_size"], "train.norm_ratio": f.get("norm_ratio")})
    return cfgmod.replace(base, options=options, privacy=priv, **top, **data, **train)


@app.command()
def train(
    protocol: str | None = typer.Option(
        None,
        help="centralised | single | ensemble | swt | cwt | fedavg | dssgd | he-fedavg | secagg-fedavg | snt | fnt "
        "| more | privacy-net",
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
    model: str | None = typer.Option(
        None, help="cnn | poly-cnn | densenet121 | unet | seg-cnn | he-clstm | privacy-net"
    ),
    task: str | None = typer.Option(None, help="classification | segmentation"),
    dataset: str | None = typer.Option(None, help="phantom | phantom:v2?sequence=T | medmnist:<path.npz>"),
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
    faults: str | None = typer.Option(
        None, help="inject faults (seeded), e.g. crash=0.3,straggle=0.2:5s,drop=0.1,corrupt=0.05,deadline=10s"
    ),
) -> None:
    """Train one protocol and write runs/<name>/result.json."""
    from privmed.engine.session import resolve
    from privmed.run import run

    with user_errors():
        cfg = config_from_flags(
            config=config,
            protocol=protocol,
            sites=sites,
            split=split,
            rounds=rounds,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            model=model,
            task=task,
            dataset=dataset,
            image_size=image_size,
            patients_scale=patients_scale,
            order=order,
            site=site,
            opt=opt,
            privacy=privacy,
            privacy_opt=privacy_opt,
            epsilon=epsilon,
            noise_multiplier=noise_multiplier,
            name=name,
            faults=faults,
            reproducible_noise=reproducible_noise,
            norm_ratio=norm_ratio,
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
    if result.reliability.get("faults_by_kind"):
        kinds = ", ".join(f"{k} {n}" for k, n in result.reliability["faults_by_kind"].items() if n)
        lost = result.reliability["rounds_lost"]
        table.add_row("faults injected (survived)", f"{kinds or 'none'}; rounds lost {lost}")
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
        "default",
        help="default (make bench: references + one row per family) | review (every row + crossover) | privacy (ε "
        "sweep) | crossover (CWT ↔ FL: sites, skew, links) | synthetic (DP-CGAN: TSTR, ε, MIA)",
    ),
    resume: bool = typer.Option(False, "--resume", help="keep the rows an interrupted bench finished; run the rest"),
    jobs: int = typer.Option(min(2, os.cpu_count() or 1), min=1, help="rows run at once, each in its own process"),
    data: str = typer.Option(
        "2d", "--data", help="2d (the phantom's images) | 3d (its volumes: the default suite's rows)"
    ),
) -> None:
    """Run a suite over several seeds; write results.json, summary.json (mean ± 95 % CI), report.md and plots."""
    from privmed.bench.suite import REVIEW_BUDGET, SUITES, VOLUME_SEEDS, run_suite, suite_attacks, suite_rows

    if suite == "synthetic":
        from privmed.synthetic.pipeline import run_bench

        with user_errors():
            out = run_bench(runs_dir=runs_dir, seeds=seeds or SUITES[suite], first_seed=seed, progress=console.print)
        console.print((out / "report.md").read_text(), highlight=False)
        return
    with user_errors():
        rows = suite_rows(suite, seed=seed, rounds=rounds, data=data)
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
                seeds=seeds or (VOLUME_SEEDS if data == "3d" else SUITES[suite]),
                **(REVIEW_BUDGET if suite == "review" else {}),
            )
        except KeyboardInterrupt:
            console.print(
                f"interrupted: finished rows are kept in {runs_dir / '.bench.partial'}; "
                "run the same command with --resume to continue"
            )
            raise typer.Exit(130) from None
    import json

    summary = json.loads((out / "summary.json").read_text())
    table = Table(title=f"privmed bench: mean ± 95 % CI over {summary['seeds']} seed(s) (full report: report.html)")
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
    console.print(
        f"wrote {out / 'report.html'}, {out / 'report.md'}, {out / 'summary.json'}, {out / 'results.json'}, plots"
    )


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="result.json / results.json files, or folders holding them"),
    out: Path = typer.Option(Path("runs/report.html"), "--out", "-o", help="where the HTML report goes"),
    title: str = typer.Option("privmed report", help="the page's title"),
) -> None:
    """Build the self-contained HTML report (tables, Tables 1–3, plots, threat matrix) from result files only."""
    from privmed.bench.html import report_from_files

    with user_errors():
        out.parent.mkdir(parents=True, exist_ok=True)
        path = report_from_files(runs, out, title=title)
    console.print(f"wrote {path}")


@app.command()
def synth(
    out: Path = typer.Option(..., help="the synthetic data set to write: a MedMNIST-format .npz"),
    epsilon: float | None = typer.Option(9.6, help="stop the DP-CGAN at this ε (image level, RDP accountant)"),
    non_private: bool = typer.Option(False, "--non-private", help="train a plain CGAN (no DP) for --steps steps"),
    steps: int | None = typer.Option(None, help="non-private: steps to train; DP: a cap below the target's steps"),
    dataset: str = typer.Option("phantom", help="phantom | medmnist:<path.npz> | any 2-D data set"),
    image_size: int = typer.Option(32, help="phantom image size"),
    n: int | None = typer.Option(None, help="synthetic images to write (default: as many as the real training set)"),
    noise_multiplier: float = typer.Option(1.12, help="σ of the discriminator's DP-SGD (the paper's 1.12)"),
    max_grad_norm: float = typer.Option(1.1, help="per-example clipping norm C (the paper's 1.1)"),
    batch_size: int = typer.Option(64, help="expected real images per step (Poisson sampling)"),
    delta: float = typer.Option(1e-5, help="δ"),
    width: int = typer.Option(32, help="channels of the generator and discriminator"),
    seed: int = typer.Option(0, help="data, initialisation and latent draws (DP noise is secret)"),
    evaluate: bool = typer.Option(False, "--evaluate", help="also measure TSTR, Fréchet distance and membership"),
    ledger: str | None = typer.Option(None, help="charge the patients' budget ledger (sqlite:///path)"),
    ledger_key: str | None = typer.Option(None, help="the hospitals' pseudonym key file (needed with --ledger)"),
) -> None:
    """Train a DP-CGAN (or a plain CGAN) and write a labelled synthetic data set and a sample grid per class."""
    import json

    from privmed.synthetic.dp_cgan import CGANConfig
    from privmed.synthetic.pipeline import run_synth

    with user_errors():
        cfg = CGANConfig(
            epsilon=None if non_private else epsilon,
            delta=delta,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            batch_size=batch_size,
            steps=steps,
            width=width,
            seed=seed,
        )
        report = run_synth(
            dataset=dataset,
            cfg=cfg,
            out=out,
            image_size=image_size,
            n=n,
            evaluate=evaluate,
            ledger=ledger,
            ledger_key=ledger_key,
        )
    p = report["privacy"]
    if p.get("private"):
        console.print(
            f"ε = {p['epsilon']:.3f} (image level, δ = {p['delta']:g}, RDP) after {p['steps']} steps; "
            f"patient level (group bound): {p['patient_epsilon_max']:.3g}"
        )
    else:
        console.print(f"non-private CGAN, {report['steps']} steps: no privacy guarantee")
    if "evaluation" in report:
        console.print(json.dumps(report["evaluation"], indent=1, default=float), highlight=False)
    console.print("wrote " + ", ".join(report["files"]))


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
def infer(
    run_dir: Path = typer.Argument(..., help="a run written by `privmed train --model he-clstm` (runs/<name>)"),
    he: str = typer.Option("ckks", help="homomorphic scheme: ckks (TenSEAL)"),
    limit: int | None = typer.Option(None, help="encrypt only this many test sequences (spread over the sites)"),
) -> None:
    """Encrypted inference (HE-CLSTM under CKKS) of a run's model on its test sequences; writes he_inference.json."""
    import json

    from privmed.privacy.he_inference import evaluate_run

    with user_errors():
        if he != "ckks":
            raise PrivmedError(f"unknown --he scheme {he!r}; valid: ckks")
        if limit is not None and limit < 1:
            raise PrivmedError(f"--limit must be >= 1, got {limit}")
        out = evaluate_run(run_dir, limit=limit)
    table = Table(title=f"{run_dir}: encrypted (CKKS) vs plaintext inference, {out['sequences']} sequences")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in (
        "identical_decisions",
        "max_abs_error",
        "auroc_encrypted",
        "auroc_plaintext",
        "seconds_per_sequence",
        "cpu_seconds_per_sequence",
        "plaintext_seconds_per_sequence",
        "bytes_up_per_sequence",
        "bytes_down_per_sequence",
        "context_bytes",
        "max_levels_used",
        "refresh_rounds_per_sequence",
    ):
        v = out[key]
        table.add_row(key, "n/a" if v is None else f"{v:,.4g}")
    Console().print(table)
    console.print(f"refreshes reveal {out['refreshes_reveal']}")
    path = Path(run_dir) / "he_inference.json"
    path.write_text(json.dumps(out, indent=2))
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


# ----------------------------------------------------------------------------- running across hospitals


@app.command()
def certs(
    out_dir: Path = typer.Argument(..., help="folder for the CA, the SuperLink's certificate and the sites' keys"),
    site: list[str] = typer.Option(..., "--site", help="a site's name (repeatable); its key pair goes to sites/NAME"),
    host: list[str] = typer.Option(
        [], "--host", help="a host name or IP the SuperLink is reached at (repeatable; default 127.0.0.1, localhost)"
    ),
) -> None:
    """Make a CA, the SuperLink's TLS certificate and each site's SuperNode key pair (private keys 0600)."""
    from privmed.engine.certs import make_certs

    with user_errors():
        files = make_certs(out_dir, sites=site, hosts=tuple(host) or ("127.0.0.1", "localhost"))
    console.print(
        f"wrote {files.ca_cert}, {files.server_cert} (+ key) and, per site, {files.root / 'sites'}/NAME (+ .pub); "
        "give each hospital ca.crt and its own key, keep ca.key offline",
        highlight=False,
    )


@app.command()
def coordinator(
    certs: Path | None = typer.Option(None, "--certs", help="the folder `privmed certs` wrote (TLS + node auth)"),
    register: list[Path] = typer.Option(
        [], "--register", help="a site's public key NAME.pub to register under NAME (repeatable)"
    ),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: reachable from other machines)"),
    port: int = typer.Option(9092, help="the SuperLink's port (Fleet, Control and Runtime APIs)"),
    home: Path = typer.Option(Path("runs/coordinator"), help="the SuperLink's folder: state database, apps, log"),
    insecure: bool = typer.Option(False, "--insecure", help="plain HTTP, no node authentication (tests only)"),
) -> None:
    """Start the SuperLink (Flower's flower-superlink) with TLS, SuperNode authentication and a state database."""
    from privmed.engine import launch
    from privmed.engine.certs import CertFiles

    with user_errors():
        if (certs is None) != insecure:
            raise PrivmedError("give --certs DIR (made by `privmed certs`), or --insecure for a test bench")
        files = None if insecure else CertFiles(certs)
        home.mkdir(parents=True, exist_ok=True)
        argv = launch.superlink_argv(files, host=host, port=port, database=home.resolve() / "state.db")
        proc = launch.start(argv, flwr_home=home.resolve(), log=home / "superlink.log")
        try:
            launch.wait_listening(host, port, proc)
            local = f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
            launch.write_connection(home, "privmed", local, None if files is None else files.ca_cert)
            for key in register:
                launch.register_site(key, name=key.name.removesuffix(".pub"), connection="privmed", flwr_home=home)
                console.print(f"registered site {key.name.removesuffix('.pub')}", highlight=False)
            console.print(
                f"SuperLink on {host}:{port} ({'plain HTTP' if files is None else 'TLS, SuperNode auth'}); "
                f"log {home / 'superlink.log'}; submit runs with FLWR_HOME={home} privmed run --federation privmed",
                highlight=False,
            )
            code = launch.run_until_stopped(proc)
        except PrivmedError:
            launch.stop(proc)
            raise
    raise typer.Exit(code)


@app.command()
def site(
    superlink: str = typer.Option(..., "--superlink", help="the coordinator's HOST:PORT"),
    name: str = typer.Option(..., "--name", help="this site's name (as registered with the coordinator)"),
    data: str = typer.Option(
        ...,
        "--data",
        help="this site's own data: a MedMNIST-format .npz, a labels .csv or a folder with labels.csv (a folder of "
        "images), medmnist:/folder:/dicom:/nifti:<path>, or phantom:K (site K of the run's phantom, demos)",
    ),
    key: Path | None = typer.Option(None, "--key", help="this site's private key (sites/NAME from `privmed certs`)"),
    ca: Path | None = typer.Option(None, "--ca", help="the coordinator's CA certificate (ca.crt)"),
    port: int | None = typer.Option(None, help="this SuperNode's own local port (default: a free one)"),
    home: Path | None = typer.Option(None, help="this SuperNode's folder (default runs/site-NAME)"),
    insecure: bool = typer.Option(False, "--insecure", help="plain HTTP to an --insecure coordinator (tests only)"),
    policy: Path | None = typer.Option(
        None, "--policy", help="this site's policy file: allowed protocols and mechanisms, DP required, max ε, ledger"
    ),
    restarts: int = typer.Option(
        20, help="restart the SuperNode this many times if it exits (coordinator restarted, not yet registered)"
    ),
    restart_wait_s: float = typer.Option(15.0, help="seconds between restarts"),
) -> None:
    """Start one hospital's SuperNode (Flower's flower-supernode) over its own data."""
    from privmed.engine import launch

    with user_errors():
        if insecure == (key is not None or ca is not None):
            raise PrivmedError("give --key and --ca (TLS + node authentication), or --insecure for a test bench")
        if not insecure and (key is None or ca is None):
            raise PrivmedError("a site needs both --key (its private key) and --ca (the coordinator's ca.crt)")
        from privmed.data.registry import load_dataset, site_data_spec

        spec = site_data_spec(data)
        kind, _, index = spec.partition(":")
        if kind == "phantom" and not index.isdigit():
            raise PrivmedError(f"--data {data!r}: the phantom's sites are phantom:K (site K of the run's phantom)")
        if kind != "phantom":  # a file the site cannot read fails here, naming it, not at the first run
            load_dataset(spec, seed=0)
        phantom = kind == "phantom"
        argv = launch.supernode_argv(
            superlink,
            site=name,
            key=key,
            ca_cert=ca,
            partition=int(index) if phantom else None,
            port=port,
            policy=policy,
            data=None if phantom else spec,
        )
        folder = home or Path("runs") / f"site-{name}"
        for attempt in range(restarts + 1):
            proc = launch.start(argv, flwr_home=folder.resolve())
            console.print(f"site {name}: SuperNode started for {superlink} (its log follows; Ctrl-C stops it)")
            code = launch.run_until_stopped(proc)
            # Flower's SuperNode exits when the SuperLink refuses it: a coordinator restarted from its database still
            # counts the site online for ~60 s, and a key not yet registered is refused; try again a bit later
            if code in (0, 130) or attempt == restarts:
                break
            console.print(f"site {name}: SuperNode exited ({code}); restarting in {restart_wait_s:g} s")
            time.sleep(restart_wait_s)
    raise typer.Exit(code)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    federation: str = typer.Option(..., "--federation", help="a [superlink.NAME] entry in $FLWR_HOME/config.toml"),
    runs_dir: Path = typer.Option(Path("runs"), help="where the coordinator writes <name>/result.json"),
    wait_sites_s: float = typer.Option(300.0, help="how long the run waits for every site to join"),
    reply_timeout_s: float = typer.Option(600.0, help="how long a round waits for a site's reply"),
    resume: bool = typer.Option(
        False, "--resume", help="continue a run whose coordinator was killed, from its last checkpointed round"
    ),
    site_names: list[str] = typer.Option(
        [], "--site", help="a site of this run, by registered name (repeatable; default: the sites online)"
    ),
) -> None:
    """Submit a run to the coordinator (Flower's flwr run); takes the same flags as `privmed train`."""
    import subprocess

    from privmed.engine import launch
    from privmed.engine.deploy import write_app

    with user_errors():
        train_cmd = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
        flags = train_cmd.make_context("privmed run", list(ctx.args)).params
        flags.pop("runs_dir"), flags.pop("resume")  # privmed run's own --runs-dir and --resume are used
        cfg = config_from_flags(**flags)
        run_dir = (runs_dir / cfg.run_name).resolve()
        app_dir = write_app(
            run_dir / "app",
            cfg,
            result_dir=run_dir,
            wait_nodes_s=wait_sites_s,
            reply_timeout_s=reply_timeout_s,
            resume=resume,
            site_names=site_names,
        ).parent
        console.print(f"submitting {cfg.run_name} ({cfg.protocol}, {cfg.data.sites} sites) to {federation}")
        done = subprocess.run([launch.flwr_bin(), "run", str(app_dir), federation, "--stream"])
        if done.returncode != 0 or not (run_dir / "result.json").exists():
            raise PrivmedError(f"the run did not finish (flwr run exit code {done.returncode}); see the log above")
    console.print(f"wrote {run_dir / 'result.json'}")


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
