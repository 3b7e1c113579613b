"""Measurement: the harness's evaluation after every round, and the one place a :class:`RunResult` is built.

Used by the in-process run (:mod:`privmed.run`) and the Flower deployment
(:mod:`privmed.engine.deploy`) alike. The sites hold the ground truth: after
each round every site summarises the model (as it sees it: decrypted by its
own key where the coordinator holds it sealed) on its own validation split,
and at the end on its test split, in an ``evaluate`` message of the grid;
the harness sums the summaries into pooled and per-site metrics
(:func:`evaluate_at_sites`, :mod:`privmed.evaluation`: exact but for AUROC,
which is exact for scores binned in 1,000 bins, its bound reported). How
traffic and scalability are measured follows the protocol's spec
(``traffic``, ``schedule``), never its name.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, RecordDict

from privmed import __version__
from privmed import evaluation as ev
from privmed.data.base import ArraySet, Federation
from privmed.engine.faults import reliability
from privmed.engine.grid import HARNESS_GROUP
from privmed.engine.validate import NORM_RULE
from privmed.errors import PrivmedError
from privmed.files import private_dir, private_writer
from privmed.protocols.base import Predictor, ProtocolOutput, ProtocolSpec
from privmed.site import ModelSpec, load_arrays
from privmed.tasks import PRIMARY_METRIC, metrics_from_proba, predict_proba, targets
from privmed.threat import matrix as threat_matrix

if TYPE_CHECKING:
    from privmed.engine.checkpoint import Checkpoint
    from privmed.engine.session import Session

# Progress callback: (round, total rounds, validation metrics)
Progress = Callable[[int, int, dict[str, float]], None]


def predict(spec: ModelSpec, predictor: Predictor, data: ArraySet) -> np.ndarray:
    """Probabilities of one model, or the mean of an ensemble's."""
    members = predictor if isinstance(predictor, list) else [predictor]
    out = None
    for arrays in members:
        model = spec.build()
        load_arrays(model, arrays)
        p = predict_proba(model, data)
        out = p if out is None else out + p
    return out / len(members)


def evaluate_predictor(
    spec: ModelSpec, predictor: Predictor, data: ArraySet, *, with_loss: bool = False
) -> dict[str, float]:
    """The task's metrics of ``predictor`` on ``data``; ``with_loss`` adds the mean cross-entropy (model selection)."""
    proba = predict(spec, predictor, data)
    out = metrics_from_proba(data, proba, task=spec.task)
    if with_loss:
        y = torch.from_numpy(targets(data, spec.task))
        out["loss"] = float(torch.nn.functional.nll_loss(torch.log(torch.from_numpy(proba).clamp_min(1e-12)), y))
    return out


# Model selection on validation only: the round with the lowest pooled validation loss is the released model.
SELECTION = "lowest pooled validation loss"
# A run has converged when its best round came before the last PLATEAU_TAIL of its budget.
PLATEAU_TAIL = 0.2


def finite_metrics(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if np.isfinite(v) else None) for k, v in d.items()}


def json_default(o: Any) -> Any:
    """How result.json and checkpoints write NumPy values (and anything else: its str)."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


@dataclass
class RunResult:
    """One run, measured; ``result.json`` is its serialisation (schema in DESIGN.md)."""

    technique: str
    protocol: str
    config: dict[str, Any]
    seed: int
    versions: dict[str, str]
    dataset: dict[str, Any]
    model: dict[str, Any]
    performance: dict[str, Any]
    communication: dict[str, Any]
    runtime: dict[str, Any]
    privacy: dict[str, Any]
    scalability: dict[str, Any]
    security: dict[str, Any]
    reliability: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    # the final model (weights, or an ensemble's list of weights); saved as model.pt, not in JSON
    predictor: Predictor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "predictor"}

    def save(self, run_dir: Path) -> Path:
        """Write model.pt then result.json, each atomically, owner-only; result.json last marks the run complete."""
        private_dir(run_dir)
        if self.predictor is not None:
            members = self.predictor if isinstance(self.predictor, list) else [self.predictor]
            with private_writer(run_dir / "model.pt") as fh:
                torch.save(
                    {
                        "ensemble": isinstance(self.predictor, list),
                        "members": [m.to_torch_state_dict() for m in members],
                    },
                    fh,
                )
        path = run_dir / "result.json"
        with private_writer(path, "w") as fh:
            fh.write(json.dumps(self.to_dict(), indent=2, default=json_default))
        return path


def load_predictor(run_dir: Path) -> Predictor:
    """The final model saved by :meth:`RunResult.save`; a PrivmedError if the file is damaged or foreign."""
    path = Path(run_dir) / "model.pt"
    try:
        saved = torch.load(path, weights_only=True)
        members = [ArrayRecord(sd) for sd in saved["members"]]
        return members if saved["ensemble"] else members[0]
    except Exception as exc:  # truncated, garbled, a foreign pickle (refused by weights_only), wrong layout
        raise PrivmedError(f"{path} is not a privmed model ({type(exc).__name__}); re-run `privmed train`") from None


@dataclass
class Evaluation:
    """The sites' answers to one evaluation: the pooled metrics, each site's, and who did not answer."""

    pooled: dict[str, float]
    per_site: dict[str, dict[str, float]]
    missing: dict[str, str]  # site -> why it gave no summary
    n: int  # images (cases) the pooled metrics cover
    losses: dict[str, tuple[float, float]] = field(default_factory=dict)  # site -> (loss sum, count)


def evaluate_at_sites(session: Session, predictor: Predictor, split: str, rnd: int | str) -> Evaluation:
    """Have every site measure ``predictor`` on its own ``split`` and return sums (:mod:`privmed.evaluation`).

    One ``evaluate`` message per site on the run's grid (in-process or deployed alike), in the harness's group
    (not counted as the protocol's traffic, no injected fault). A pooled protocol (centralised) has one party
    holding every site's data: its holder measures each site's part itself, with the same summaries.
    """
    s = session
    summaries: dict[str, dict] = {}
    missing: dict[str, str] = {}
    if s.protocol.pooled:
        for site in s.fed.sites:
            data = getattr(site, split)
            proba = predict(s.model, predictor, data) if len(data) else np.zeros((0, s.model.n_classes))
            summaries[site.name] = ev.summary(proba, data, task=s.model.task)
    else:
        grid = s.grid
        nodes = sorted(grid.get_node_ids())
        group = f"{HARNESS_GROUP}{split}-{rnd}"
        content = ev.request(predictor, split)
        msgs = [Message(RecordDict(content), node, "evaluate", group_id=group) for node in nodes]
        replies = {int(r.metadata.src_node_id): r for r in grid.send_and_receive(msgs)}
        for node in nodes:
            name = s.node_site.get(node) or grid.site_of(node)
            reply = replies.get(node)
            if reply is None:
                missing[name] = "no reply"
            elif reply.has_error():
                missing[name] = f"site error: {reply.error.reason}"
            elif ev.SUMMARY not in reply.content.array_records:
                missing[name] = "reply carries no summary"
            else:
                try:
                    summaries[name] = ev.from_record(reply.content[ev.SUMMARY])
                except ValueError as exc:
                    missing[name] = str(exc)
    pooled = ev.add([v for v in summaries.values()])
    return Evaluation(
        pooled=ev.metrics_of(pooled, with_loss=True) if pooled is not None and ev.count(pooled) else {},
        per_site={k: ev.metrics_of(v) for k, v in summaries.items() if ev.count(v)},
        missing=missing,
        n=ev.count(pooled) if pooled is not None else 0,
        losses={k: ev.loss_parts(v) for k, v in summaries.items() if ev.count(v)},
    )


class Monitor:
    """The harness's ``evaluate_fn``: after every round, validate the model as the sites see it, checkpoint, report.

    A round in which every site's update was rejected stops the run (on an
    in-process grid, which counts who was asked to train; not yet in a deployment).
    It keeps the round with the lowest validation loss (:data:`SELECTION`): the
    run releases that model, selected on validation only, never on test.
    """

    def __init__(
        self,
        session: Session,
        *,
        progress: Progress | None = None,
        checkpoint: Checkpoint | None = None,
        started: float | None = None,
    ) -> None:
        self.session, self.progress, self.checkpoint = session, progress, checkpoint
        self.history: list[dict[str, Any]] = []
        self.started = time.perf_counter() if started is None else started
        self.prior_wall = 0.0  # wall seconds an interrupted run had spent before its resume
        self._last = time.perf_counter()
        if session.in_process and not sum(len(site.val) for site in session.fed.sites):  # refused before training
            raise PrivmedError(_no_validation(session))
        self.best: dict[str, Any] | None = None  # {"round", "loss", "predictor"}

    def __call__(self, rnd: int, predictor: Predictor) -> dict:
        s = self.session
        # the checkpoint keeps the model as the sites see it (decrypted), as model.pt will at the end:
        # a resumed encrypted run sets up new keys and starts from it as from public initial weights
        predictor = s.reveal(predictor)
        now = time.perf_counter()
        rejected = [r for r in s.ctx.rejections if r["round"] == rnd]
        # with injected faults a round in which no update arrives is a lost round (reported), not a stop
        if rejected and s.in_process and s.faults is None and len(rejected) >= _trained_in_round(s.grid, rnd):
            raise PrivmedError(f"round {rnd}: every site's update was rejected ({rejected[0]['reason']})")
        found = evaluate_at_sites(s, predictor, "val", rnd)
        if not found.n and not found.missing:
            raise PrivmedError(_no_validation(s))
        metrics = found.pooled
        entry = {"round": rnd, "seconds": now - self._last, "val": finite_metrics(metrics)}
        if found.missing:  # a site that did not answer (down, late): this round's figures are the others'
            entry["val_missing"] = found.missing
        self.history.append(entry)
        if found.n and self._better(found):
            self.best = {"round": rnd, "loss": metrics["loss"], "predictor": predictor, "sites": found.losses}
        self._last = time.perf_counter()
        if self.checkpoint:
            self.checkpoint.save(s, rnd, predictor, self.history, self.wall(), best=self.best)
        if self.progress and metrics:
            self.progress(rnd, s.rounds, metrics)
        return metrics

    def _better(self, found: Evaluation) -> bool:
        """Lower validation loss than the best round's, on the sites both rounds were measured on (a site that was
        down in one of them is left out of the comparison); no common site: the newer round."""
        if self.best is None:
            return True
        before = self.best.get("sites") or {}
        common = sorted(set(before) & set(found.losses)) if before else []
        if not before:  # a best restored from an older checkpoint: its pooled loss
            return found.pooled["loss"] < self.best["loss"]
        if not common:
            return True
        now = sum(found.losses[k][0] for k in common) / sum(found.losses[k][1] for k in common)
        then = sum(before[k][0] for k in common) / sum(before[k][1] for k in common)
        return now < then

    def wall(self) -> float:
        return self.prior_wall + time.perf_counter() - self.started

    def selection(self, rounds: int, metric: str) -> dict[str, Any]:
        """Which round was released and whether the budget was past the validation plateau."""
        best = self.best["round"] if self.best else rounds
        target = TARGETS.get(metric)
        reached = [h["round"] for h in self.history if target and (h["val"].get(target[0]) or 0) >= target[1]]
        return {
            "criterion": SELECTION,
            "round": best,
            "rounds_run": rounds,
            "converged": best <= (1 - PLATEAU_TAIL) * rounds,
            "rounds_to_target": reached[0] if reached else None,
            "target": f"validation {target[0]} >= {target[1]}" if target else None,
        }


def _no_validation(s: Session) -> str:
    return (
        f"{s.fed.dataset_name}: the sites' validation splits are empty "
        f"({sum(len(site.train) for site in s.fed.sites)} training images, {len(s.fed.sites)} sites); "
        "the released model is selected on validation: give the data set more patients or use fewer sites"
    )


# The validation level at which "rounds to target" is counted, per task's primary metric
TARGETS = {"accuracy": ("auroc", 0.9), "dice": ("dice", 0.5)}


def _trained_in_round(grid: Any, rnd: int) -> int:
    """Sites asked to train in round ``rnd``, from an in-process grid's traffic records."""
    return sum(
        1 for r in grid.traffic.records if r["round"] == str(rnd) and r["direction"] == "down" and r["type"] == "train"
    )


def build_result(
    session: Session, output: ProtocolOutput, monitor: Monitor, *, cpu_start: float, engine: str = "in-process"
) -> RunResult:
    """The run's result.json, from the session, the protocol's output (already revealed) and the monitor's history.

    Wall time stops here, before the final test evaluation; CPU time (from ``cpu_start``) includes it.
    """
    wall = monitor.wall()
    s, config = session, session.config
    fed, spec = s.fed, s.protocol
    released = monitor.best["predictor"] if monitor.best else output.predictor  # selected on validation only
    tested = evaluate_at_sites(s, released, "test", "final")
    final = finite_metrics({k: v for k, v in tested.pooled.items() if k not in ("loss", "auroc_binning_bound")})
    per_site = {k: finite_metrics(_without_bound(v)) for k, v in tested.per_site.items()}
    in_process = s.in_process
    # a protocol's own figures (ciphertext sizes, phase timings, DSSGD's ε, split learning's training budget)
    measured = output.measured
    if in_process:
        communication = measure_communication(spec, s.grid.traffic, s.node_site, fed, s.rounds)
        scalability = measure_scalability(spec, s.grid.site_seconds.values(), communication, s.rounds)
        site_seconds = {"site_seconds": {s.node_site[n]: sec for n, sec in s.grid.site_seconds.items()}}
    else:
        communication = {"note": "not measured: Flower's deployed Grid does not report bytes"}
        scalability = {"note": "not measured: the sites' training time is spent on the SuperNodes"}
        site_seconds = {}
    communication.update(measured.get("communication", {}))
    history = monitor.history
    return RunResult(
        technique=spec.technique,
        protocol=spec.name,
        config=config.to_dict(),
        seed=config.seed,
        versions=library_versions(),
        dataset={
            "name": fed.dataset_name,
            "task": config.task,
            "image_shape": list(fed.image_shape),
            "n_classes": fed.n_classes,
            "split": fed.split,
            "distribution": fed.distribution(),
        },
        model={"name": config.model, "parameters": s.n_parameters},
        performance={
            "metric": PRIMARY_METRIC[config.task],
            "final": final,
            "per_site": per_site,
            "history": history,
            "selection": monitor.selection(s.rounds, PRIMARY_METRIC[config.task]),
            "evaluation": {
                "by": "each site on its own splits; the coordinator sums their summaries (privmed.evaluation)",
                "test_images": tested.n,
                "auroc_bins": ev.BINS,
                "auroc_binning_bound": tested.pooled.get("auroc_binning_bound"),
                **({"test_missing": tested.missing} if tested.missing else {}),
            },
            "budget": measured.get("budget") or training_budget(s),  # a protocol whose sites count it themselves
        },
        communication=communication,
        runtime={
            "wall_seconds": wall,
            "cpu_seconds": time.process_time() - cpu_start,
            "per_round_seconds": [h["seconds"] for h in history],
            **site_seconds,
            **({} if in_process else {"engine": engine}),
            **measured.get("runtime", {}),
        },
        privacy={
            "coordinator_sees": spec.coordinator_sees,
            "threat": threat_matrix(spec, s.mechanism),
            "mechanism": s.mechanism.name,
            "leakage": "not measured yet",
            **s.mechanism.report(),
            **measured.get("privacy", {}),
        },
        scalability=scalability,
        security={"attacks": "not measured yet"},
        reliability={
            "rejected_updates": s.ctx.rejections,
            "update_norm_bound": {"ratio": config.train.norm_ratio, "rule": NORM_RULE},
            "faults_injected": [],
            **(
                reliability(s.faults.events, s.ctx.rejections, s.grid.traffic.records, s.node_site)
                if s.faults is not None
                else {}
            ),
            "completed": True,
            **({} if in_process else {"nodes": sorted(s.grid.get_node_ids())}),
            **measured.get("reliability", {}),
        },
        predictor=released,
    )


def _without_bound(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "auroc_binning_bound"}


def training_budget(session: Session) -> dict[str, Any]:
    """Compute spent, from what the sites counted (in-process): local optimiser steps and sample-gradients."""
    counts = [m.get("budget", {}) for m in session.site_memory.values()]
    if not counts:
        return {"note": "not measured: the sites' training happens on the SuperNodes"}
    steps, samples = sum(c.get("local_steps", 0) for c in counts), sum(c.get("sample_gradients", 0) for c in counts)
    rounds = max(session.rounds, 1)
    return {
        "local_steps": steps,
        "sample_gradients": samples,
        "local_steps_per_round": steps / rounds,
        "sample_gradients_per_round": samples / rounds,
    }


def measure_scalability(
    spec: ProtocolSpec, site_seconds: Iterable[float], communication: dict[str, Any], rounds: int
) -> dict[str, Any]:
    """How the run's cost grows with the number of sites, from its own measurements.

    In-process every site runs in turn; in a deployment the sites of a
    parallel protocol (FedAvg and its variants, ensembling) train at once, so
    a round waits for the slowest site, while a sequential protocol (SWT, CWT,
    SNT, FNT, DSSGD) waits for every site in turn: its training time grows
    with the number of sites. The coordinator's traffic grows linearly with
    sites for every protocol. ``benchmarks/scale.py`` measures FedAvg at 100 sites.
    """
    seconds = list(site_seconds)
    if spec.schedule == "one trainer":
        return {"schedule": "one trainer", "sites_training": 1, "training_seconds": sum(seconds)}
    total = communication.get("bytes_up", 0) + communication.get("bytes_down", 0)
    return {
        "schedule": spec.schedule,
        "sites_training": len(seconds),
        "site_seconds_sum": sum(seconds),
        "site_seconds_max": max(seconds),
        # the sites' share of a deployment's wall time: sequential = all of them in turn, parallel = the slowest
        "deployment_training_seconds": sum(seconds) if spec.schedule == "sequential" else max(seconds),
        "coordinator_bytes_per_round": total / max(rounds, 1),
    }


def measure_communication(
    spec: ProtocolSpec, traffic: Any, node_site: dict[int, str], fed: Federation, rounds: int
) -> dict[str, Any]:
    """Bytes the protocol itself sends, from the engine's counts.

    The harness talks to every site every round so it can measure; where the
    protocol would not (a site alone sends nothing; an ensemble uploads each
    site's model once, at the end), only the protocol's own traffic counts.
    """
    if spec.traffic == "raw data":
        raw = sum(s.train.nbytes + s.val.nbytes for s in fed.sites)
        return {
            "raw_data_bytes_up": raw,
            "bytes_up": raw,
            "bytes_down": 0,
            "per_site": {},
            "per_round": {},
            "note": "every site uploads its raw training data once",
        }
    if spec.traffic == "none":
        return {
            "bytes_up": 0,
            "bytes_down": 0,
            "per_site": {},
            "per_round": {},
            "bytes_per_site_per_round": 0,
            "note": "a site training alone sends nothing",
        }
    per_round = traffic.by_round()
    if spec.traffic == "final upload":
        last = per_round[max(per_round, key=int)]["up"]
        return {
            "bytes_up": last,
            "bytes_down": 0,
            "per_site": {},
            "per_round": {},
            "bytes_per_site_per_round": last / len(node_site) / rounds,
            "note": "each site uploads its own model once, at the end",
        }
    return {
        "bytes_up": traffic.total("up"),
        "bytes_down": traffic.total("down"),
        "per_site": {node_site[n]: v for n, v in traffic.by_node().items()},
        "per_round": per_round,
        "bytes_per_site_per_round": traffic.total() / max(len(node_site), 1) / max(rounds, 1),
    }


def library_versions() -> dict[str, str]:
    import flwr
    import monai

    return {
        "privmed": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": flwr.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
    }
