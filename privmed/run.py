"""The harness: config -> data -> sites on a Grid -> protocol -> measured result.json.

The harness, not the coordinator, holds the ground truth: it evaluates the
protocol's model after every round on the pooled validation split and, at
the end, on every site's test split. Nothing is written until the run has
finished; ``result.json`` is then written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from privmed import __version__
from privmed.config import DataConfig, RunConfig
from privmed.data.base import ArraySet, Federation, SiteData
from privmed.engine.grid import InProcessGrid, setup_frozen
from privmed.errors import PrivmedError
from privmed.models import n_parameters
from privmed.privacy.registry import make_mechanism
from privmed.protocols.base import Predictor, ProtocolContext
from privmed.protocols.registry import SEQUENTIAL, SITE_MODS, get_protocol
from privmed.site import ModelSpec, load_arrays, make_client_app
from privmed.tasks import PRIMARY_METRIC, metrics_from_proba, predict_proba

FIRST_NODE_ID = 2  # node 1 is the coordinator


def build_federation(cfg: DataConfig, seed: int) -> Federation:
    from privmed.data.partition import partition
    from privmed.data.registry import load_dataset

    # A generated data set has as many scanners as sites only for the natural
    # split; other splits redistribute the default phantom's patients.
    natural = cfg.split.split(":")[0] == "natural"
    dataset = load_dataset(
        cfg.dataset, seed=seed, n_sites=cfg.sites if natural else DataConfig().sites, image_size=cfg.image_size,
        n_classes=cfg.n_classes, shared_patient_fraction=cfg.shared_patient_fraction,
        patients_scale=cfg.patients_scale,
    )
    return partition(dataset, n_sites=cfg.sites, split=cfg.split, seed=seed)


def model_spec(config: RunConfig, fed: Federation) -> ModelSpec:
    if len(fed.image_shape) != 3:  # [C, D, H, W]: 3-D networks are not wired to the protocols yet
        raise PrivmedError(f"{fed.dataset_name} holds 3-D volumes {list(fed.image_shape)} and privmed's networks are 2-D; "
                           f"add ?slices=axial to the data set name to train on their axial slices")
    n_out = 2 if config.task == "segmentation" else fed.n_classes
    return ModelSpec(config.model, in_channels=fed.image_shape[0], n_classes=n_out, task=config.task)


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


def evaluate_predictor(spec: ModelSpec, predictor: Predictor, data: ArraySet) -> dict[str, float]:
    return metrics_from_proba(data, predict(spec, predictor, data), task=spec.task)


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
        """Write model.pt then result.json, each atomically; result.json last marks the run complete."""
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.predictor is not None:
            members = self.predictor if isinstance(self.predictor, list) else [self.predictor]
            tmp = run_dir / "model.pt.tmp"
            torch.save({"ensemble": isinstance(self.predictor, list), "members": [m.to_torch_state_dict() for m in members]}, tmp)
            os.replace(tmp, run_dir / "model.pt")
        path = run_dir / "result.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))
        os.replace(tmp, path)
        return path


def load_predictor(run_dir: Path) -> Predictor:
    """The final model saved by :meth:`RunResult.save`."""
    saved = torch.load(Path(run_dir) / "model.pt", weights_only=True)
    members = [ArrayRecord(sd) for sd in saved["members"]]
    return members if saved["ensemble"] else members[0]


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def finite_metrics(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if np.isfinite(v) else None) for k, v in d.items()}


# Progress callback: (round, total rounds, validation metrics)
Progress = Callable[[int, int, dict[str, float]], None]


def rounds_of(config: RunConfig, n_sites: int) -> int:
    """How many times the protocol calls back (SWT: one stage per site)."""
    return n_sites if config.protocol == "swt" else config.train.rounds


def execute(config: RunConfig, *, progress: Progress | None = None, fed: Federation | None = None,
            checkpoint_dir: Path | None = None, resume: bool = False) -> RunResult:
    """Run one configuration and measure it.

    With ``checkpoint_dir``, the state after every round is saved there
    (``checkpoint.pt``, atomically); ``resume`` continues from it.
    """
    set_threads()
    random.seed(config.seed)  # Flower's node sampling uses the global `random`
    np.random.seed(config.seed)  # and SecAgg+'s stochastic rounding the global NumPy one
    torch.manual_seed(config.seed)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    fed = fed or build_federation(config.data, config.seed)
    spec = model_spec(config, fed)
    fn, technique, coordinator_sees = get_protocol(config.protocol)

    centralised = config.protocol == "centralised"
    sites: tuple[SiteData, ...] = (
        (SiteData("pooled", fed.pooled("train"), fed.pooled("val"), fed.pooled("test")),) if centralised else fed.sites
    )
    mechanism = make_mechanism(config.privacy)
    ckpt = Checkpoint(Path(checkpoint_dir) / "checkpoint.pt") if checkpoint_dir else None
    saved = None
    if resume:
        if ckpt is None:
            raise PrivmedError("resume needs a run directory")
        saved = ckpt.load(config)
        # before check(): a budget check then counts this run's interrupted spend (already in the ledger) once, not twice
        mechanism.load_state_dict(json.loads(saved["mechanism"]))
    mechanism.check(fed, config)
    apps = {
        FIRST_NODE_ID + i: make_client_app(s, spec, site_index=i, trainer=mechanism.trainer(i),
                                           mods=[*mechanism.client_mods(i), *([SITE_MODS[config.protocol](i)] if config.protocol in SITE_MODS else [])])
        for i, s in enumerate(sites)
    }
    grid = InProcessGrid(apps)
    node_site = {FIRST_NODE_ID + i: s.name for i, s in enumerate(sites)}

    initial_model = spec.build(seed=config.seed)
    val = fed.pooled("val")
    history: list[dict[str, Any]] = []
    total = rounds_of(config, len(sites))
    last = [time.perf_counter()]

    # encrypting mechanisms: the harness reads the model as a site decrypts it (never the coordinator)
    reveal = getattr(mechanism, "reveal", lambda p: p)
    ctx = ProtocolContext(grid=grid, initial=ArrayRecord(initial_model.state_dict()), settings=config.train,
                          seed=config.seed, evaluate_fn=lambda r, p: None, options=dict(config.options),
                          wrap_strategy=mechanism.wrap_strategy)

    def evaluate_fn(rnd: int, predictor: Predictor) -> dict:  # predictor: as the sites see it
        now = time.perf_counter()
        rejected = [r for r in ctx.rejections if r["round"] == rnd]
        if rejected and len(rejected) >= _trained_in_round(grid, rnd):
            raise PrivmedError(f"round {rnd}: every site's update was rejected ({rejected[0]['reason']})")
        metrics = evaluate_predictor(spec, predictor, val)
        history.append({"round": rnd, "seconds": now - last[0], "val": finite_metrics(metrics)})
        last[0] = time.perf_counter()
        return metrics

    prior_wall = ckpt.restore(saved, ctx, grid, history, mechanism) if saved else 0.0

    def evaluate_and_checkpoint(rnd: int, predictor: Predictor) -> dict:
        # the checkpoint keeps the model as the sites see it (decrypted), as model.pt will at the end:
        # a resumed encrypted run sets up new keys and starts from it as from public initial weights
        predictor = reveal(predictor)
        metrics = evaluate_fn(rnd, predictor)
        if ckpt:
            ckpt.save(config, rnd, predictor, ctx, grid, history, mechanism, prior_wall + time.perf_counter() - t_start)
        if progress:
            progress(rnd, total, metrics)
        return metrics

    ctx.evaluate_fn = evaluate_and_checkpoint
    with setup_frozen(), contextlib.closing(mechanism):  # close: a budget ledger drops the run's hold
        output = fn(ctx)
    output.predictor = reveal(output.predictor)
    wall = prior_wall + time.perf_counter() - t_start

    test_all = fed.pooled("test")
    final = finite_metrics(evaluate_predictor(spec, output.predictor, test_all))
    per_site = {s.name: finite_metrics(evaluate_predictor(spec, output.predictor, s.test)) for s in fed.sites if len(s.test)}

    communication = measure_communication(config.protocol, grid.traffic, node_site, fed, total)
    metric = PRIMARY_METRIC[config.task]
    measured = getattr(output, "measured", {})  # a protocol's own figures (ciphertext sizes, phase timings)
    communication.update(measured.get("communication", {}))
    return RunResult(
        technique=technique,
        protocol=config.protocol,
        config=config.to_dict(),
        seed=config.seed,
        versions=library_versions(),
        dataset={
            "name": fed.dataset_name, "task": config.task, "image_shape": list(fed.image_shape),
            "n_classes": fed.n_classes, "split": fed.split, "distribution": fed.distribution(),
        },
        model={"name": config.model, "parameters": n_parameters(initial_model)},
        performance={"metric": metric, "final": final, "per_site": per_site, "history": history},
        communication=communication,
        runtime={
            "wall_seconds": wall, "cpu_seconds": time.process_time() - cpu_start,
            "per_round_seconds": [h["seconds"] for h in history],
            "site_seconds": {node_site[n]: s for n, s in grid.site_seconds.items()},
            **measured.get("runtime", {}),
        },
        privacy={"coordinator_sees": coordinator_sees, "mechanism": mechanism.name, "leakage": "not measured yet",
                 **mechanism.report(), **getattr(output, "privacy", {})},
        scalability=measure_scalability(config.protocol, grid.site_seconds.values(), communication, total),
        security={"attacks": "not measured yet"},
        reliability={"rejected_updates": ctx.rejections, "faults_injected": [], "completed": True},
        predictor=output.predictor,
    )


def measure_scalability(protocol: str, site_seconds: Iterable[float], communication: dict[str, Any], rounds: int) -> dict[str, Any]:
    """How the run's cost grows with the number of sites, from its own measurements.

    In-process every site runs in turn; in a deployment the sites of a
    parallel protocol (FedAvg and its variants, ensembling) train at once, so
    a round waits for the slowest site, while a sequential protocol (SWT, CWT,
    SNT, FNT, DSSGD) waits for every site in turn: its training time grows
    with the number of sites. The coordinator's traffic grows linearly with
    sites for every protocol. ``benchmarks/scale.py`` measures FedAvg at 100 sites.
    """
    seconds = list(site_seconds)
    if protocol in ("centralised", "single"):
        return {"schedule": "one trainer", "sites_training": 1, "training_seconds": sum(seconds)}
    schedule = "sequential" if protocol in SEQUENTIAL else "parallel"
    total = communication.get("bytes_up", 0) + communication.get("bytes_down", 0)
    return {
        "schedule": schedule, "sites_training": len(seconds),
        "site_seconds_sum": sum(seconds), "site_seconds_max": max(seconds),
        # the sites' share of a deployment's wall time: sequential = all of them in turn, parallel = the slowest
        "deployment_training_seconds": sum(seconds) if schedule == "sequential" else max(seconds),
        "coordinator_bytes_per_round": total / max(rounds, 1),
    }


def measure_communication(protocol: str, traffic: Any, node_site: dict[int, str], fed: Federation, rounds: int) -> dict[str, Any]:
    """Bytes the protocol itself sends, from the engine's counts.

    The harness talks to every site every round so it can measure; where the
    protocol would not (a site alone sends nothing; an ensemble uploads each
    site's model once, at the end), only the protocol's own traffic counts.
    """
    if protocol == "centralised":
        raw = sum(s.train.nbytes + s.val.nbytes for s in fed.sites)
        return {"raw_data_bytes_up": raw, "bytes_up": raw, "bytes_down": 0, "per_site": {}, "per_round": {},
                "note": "every site uploads its raw training data once"}
    if protocol == "single":
        return {"bytes_up": 0, "bytes_down": 0, "per_site": {}, "per_round": {}, "bytes_per_site_per_round": 0,
                "note": "a site training alone sends nothing"}
    per_round = traffic.by_round()
    if protocol == "ensemble":
        last = per_round[max(per_round, key=int)]["up"]
        return {"bytes_up": last, "bytes_down": 0, "per_site": {}, "per_round": {}, "bytes_per_site_per_round": last / len(node_site) / rounds,
                "note": "each site uploads its own model once, at the end"}
    return {
        "bytes_up": traffic.total("up"), "bytes_down": traffic.total("down"),
        "per_site": {node_site[n]: v for n, v in traffic.by_node().items()}, "per_round": per_round,
        "bytes_per_site_per_round": traffic.total() / max(len(node_site), 1) / max(rounds, 1),
    }


class Checkpoint:
    """The state of a run after a round: enough to resume it where it stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, config: RunConfig, rnd: int, predictor: Predictor, ctx: ProtocolContext, grid: InProcessGrid,
             history: list, mechanism: Any, wall: float) -> None:
        members = predictor if isinstance(predictor, list) else [predictor]
        state = {
            "config": json.dumps(config.to_dict(), sort_keys=True, default=_json_default), "round": rnd,
            "ensemble": isinstance(predictor, list), "members": [m.to_torch_state_dict() for m in members],
            "history": json.dumps(history), "rejections": json.dumps(ctx.rejections),
            "traffic": json.dumps(grid.traffic.records), "site_seconds": json.dumps(grid.site_seconds),
            "protocol_state": json.dumps(ctx.state, default=_json_default), "global_rng": global_rng_state(),
            "mechanism": json.dumps(mechanism.state_dict(), default=_json_default), "wall": wall,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self, config: RunConfig) -> dict[str, Any]:
        """The saved state, checked to belong to ``config``."""
        if not self.path.exists():
            raise PrivmedError(f"nothing to resume: no checkpoint at {self.path} (run without --resume)")
        try:
            state = torch.load(self.path, weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise PrivmedError(f"checkpoint {self.path} is unreadable ({type(exc).__name__}); delete it and start again") from None
        if state["config"] != json.dumps(config.to_dict(), sort_keys=True, default=_json_default):
            raise PrivmedError(f"checkpoint {self.path} was made with a different config; use the same config or run without --resume")
        return state

    def restore(self, state: dict[str, Any], ctx: ProtocolContext, grid: InProcessGrid, history: list, mechanism: Any) -> float:
        """Load a saved state (:meth:`load`) into a fresh run; return the wall seconds already spent."""
        members = [ArrayRecord(sd) for sd in state["members"]]
        ctx.initial = members if state["ensemble"] else members[0]
        ctx.start_round = state["round"] + 1
        history[:] = json.loads(state["history"])
        ctx.rejections[:] = json.loads(state["rejections"])
        ctx.state.update(json.loads(state.get("protocol_state", "{}")))
        if "global_rng" in state:  # checkpoints made before it was kept lack it
            set_global_rng_state(state["global_rng"])
        grid.traffic.records[:] = json.loads(state["traffic"])
        grid.site_seconds.update({int(k): v for k, v in json.loads(state["site_seconds"]).items()})
        mechanism.load_state_dict(json.loads(state["mechanism"]))
        return float(state["wall"])

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only if the run left nothing else there


def global_rng_state() -> dict[str, Any]:
    """The global generators :func:`execute` seeds, as plain values and a tensor (``torch.load(weights_only=True)`` reads them).

    Flower draws from them (SecAgg+'s stochastic rounding from NumPy's, node
    sampling from ``random``): a resumed run that continues their streams
    computes what the uninterrupted run would have.
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss], "python": random.getstate()}


def set_global_rng_state(state: dict[str, Any]) -> None:
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def set_threads() -> None:
    """One intra-op thread unless PRIVMED_TORCH_THREADS says otherwise.

    The default networks are small: on a 2-core machine shared with other work,
    a second intra-op thread made a CNN step 30x slower (measured), never faster.
    Sites run one after another in-process, so one thread loses nothing.
    """
    torch.set_num_threads(int(os.environ.get("PRIVMED_TORCH_THREADS", "1")))
    logging.getLogger("flwr").setLevel(logging.ERROR)  # Flower logs every round at INFO


def _trained_in_round(grid: InProcessGrid, rnd: int) -> int:
    return sum(1 for r in grid.traffic.records if r["round"] == str(rnd) and r["direction"] == "down" and r["type"] == "train")


def library_versions() -> dict[str, str]:
    import flwr
    import monai

    return {"privmed": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "flwr": flwr.__version__, "monai": monai.__version__, "numpy": np.__version__}


def run(config: RunConfig, *, runs_dir: str | Path = "runs", progress: Progress | None = None,
        resume: bool = False) -> tuple[RunResult, Path]:
    """Execute ``config`` and write ``<runs_dir>/<name>/result.json`` (and model.pt).

    A checkpoint is kept in the run directory while the run goes; if the run
    is interrupted it stays there and ``resume=True`` continues from it. A user
    error discards it (resuming would meet the same error).
    """
    run_dir = Path(runs_dir) / config.run_name
    ckpt = Checkpoint(run_dir / "checkpoint.pt")
    try:
        result = execute(config, progress=progress, checkpoint_dir=run_dir, resume=resume)
    except PrivmedError:
        if not resume:
            ckpt.discard()
        raise
    path = result.save(run_dir)
    ckpt.discard()
    return result, path
