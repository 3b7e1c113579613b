"""The in-process run: config -> session -> protocol -> measured result.json.

The recipe is :func:`execute`; the parts live where they are shared with the
deployment and the audit: assembly in :mod:`privmed.engine.session`,
measurement and :class:`RunResult` in :mod:`privmed.engine.result`,
checkpoints in :mod:`privmed.engine.checkpoint`. Nothing is written until the
run has finished; ``result.json`` is then written atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import torch

from privmed.config import RunConfig, check_run_name
from privmed.data.base import Federation
from privmed.engine.checkpoint import Checkpoint
from privmed.engine.grid import setup_frozen
from privmed.engine.result import Monitor, Progress, RunResult, build_result
from privmed.engine.session import assemble
from privmed.errors import PrivmedError


def execute(
    config: RunConfig,
    *,
    progress: Progress | None = None,
    fed: Federation | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> RunResult:
    """Run one configuration and measure it.

    With ``checkpoint_dir``, the state after every round is saved there
    (``checkpoint.pt``, atomically); ``resume`` continues from it.
    """
    set_threads()
    started, cpu_start = time.perf_counter(), time.process_time()
    ckpt = Checkpoint(Path(checkpoint_dir) / "checkpoint.pt") if checkpoint_dir else None
    if resume and ckpt is None:
        raise PrivmedError("resume needs a run directory")
    saved = ckpt.load(config) if resume else None
    session = assemble(config, fed=fed, mechanism_state=Checkpoint.mechanism_state(saved) if saved else None)
    monitor = Monitor(session, progress=progress, checkpoint=ckpt, started=started)
    session.ctx.evaluate_fn = monitor
    if saved:
        monitor.prior_wall = Checkpoint.restore(saved, session, monitor)
    elif ckpt:  # round 0: what a kill before the first round needs to resume (the ledger's run id, the streams)
        ckpt.save(session, 0, session.ctx.initial, [], 0.0)
    with setup_frozen(), contextlib.closing(session.mechanism):  # close: a budget ledger drops the run's hold
        output = session.protocol.run(session.ctx)
    output.predictor = session.reveal(output.predictor)
    return build_result(session, output, monitor, cpu_start=cpu_start)


def set_threads() -> None:
    """One intra-op thread unless PRIVMED_TORCH_THREADS says otherwise.

    The default networks are small: on a 2-core machine shared with other work,
    a second intra-op thread made a CNN step 30x slower (measured), never faster.
    Sites run one after another in-process, so one thread loses nothing.
    """
    torch.set_num_threads(int(os.environ.get("PRIVMED_TORCH_THREADS", "1")))
    logging.getLogger("flwr").setLevel(logging.ERROR)  # Flower logs every round at INFO


def run(
    config: RunConfig,
    *,
    runs_dir: str | Path = "runs",
    progress: Progress | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[RunResult, Path]:
    """Execute ``config`` and write ``<runs_dir>/<name>/result.json`` (and model.pt).

    A checkpoint is kept in the run directory while the run goes; if the run
    is interrupted it stays there and ``resume=True`` continues from it. A user
    error discards it (resuming would meet the same error). A finished run of
    the same name is refused before anything trains, unless ``overwrite``.
    """
    run_dir = Path(runs_dir) / check_run_name(config.run_name)
    if (run_dir / "result.json").exists() and not (overwrite or resume):
        raise PrivmedError(
            f"run {config.run_name!r} already finished in {run_dir}; give another --name, or --overwrite to replace it"
        )
    ckpt = Checkpoint(run_dir / "checkpoint.pt")
    try:
        result = execute(config, progress=progress, checkpoint_dir=run_dir, resume=resume)
    except PrivmedError:
        if not resume:
            ckpt.discard()
        raise
    (run_dir / "audit.json").unlink(missing_ok=True)  # it audited the result this one replaces
    path = result.save(run_dir)
    ckpt.discard()
    return result, path
