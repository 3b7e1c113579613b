"""What every protocol gets and returns, and the one helper they share.

A protocol is a function ``run(ctx: ProtocolContext) -> ProtocolOutput``. It
sees the Grid, the initial weights and the hyper-parameters, never a site's
data. Measurement (validation after each round) is the harness's
``evaluate_fn``: the harness holds the ground truth, the coordinator does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from privmed.engine.validate import reply_problem

# A model the harness can evaluate: one set of weights, or an ensemble of them.
Predictor = ArrayRecord | list[ArrayRecord]


@dataclass(frozen=True)
class TrainSettings:
    rounds: int = 10
    local_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32

    def __post_init__(self) -> None:
        from privmed.errors import PrivmedError

        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise PrivmedError("rounds, local epochs and batch size must be at least 1")
        if not self.lr > 0:
            raise PrivmedError(f"learning rate must be > 0, got {self.lr}")


@dataclass
class ProtocolContext:  # pylint: disable=too-many-instance-attributes
    grid: Grid
    initial: ArrayRecord
    settings: TrainSettings
    seed: int
    # called after each round with (round, predictor); returns the validation metrics
    evaluate_fn: Callable[[int, Predictor], dict]
    options: dict = field(default_factory=dict)
    rejections: list[dict] = field(default_factory=list)
    # a privacy mechanism's wrapper around Flower strategies (identity by default)
    wrap_strategy: Callable[[Strategy], Strategy] = lambda s: s
    # first round to run: > 1 when resuming an interrupted run from its checkpoint,
    # in which case ``initial`` is the checkpointed predictor (as the sites see it: decrypted)
    start_round: int = 1
    # a protocol's own coordinator state between rounds (JSON-able), kept by the checkpoint
    state: dict = field(default_factory=dict)

    def round_config(self, rnd: int, *, epochs: int | None = None) -> ConfigRecord:
        return ConfigRecord({
            "local-epochs": int(epochs or self.settings.local_epochs), "lr": float(self.settings.lr),
            "batch-size": int(self.settings.batch_size), "seed": int(self.seed * 100_003 + rnd), "server-round": int(rnd),
        })

    def reject(self, rnd: int, node: int, reason: str) -> None:
        self.rejections.append({"round": rnd, "node": int(node), "reason": reason})

    def rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])


@dataclass
class ProtocolOutput:
    predictor: Predictor


def train_at(ctx: ProtocolContext, node: int, arrays: ArrayRecord, rnd: int, *, epochs: int | None = None) -> ArrayRecord | None:
    """Send ``arrays`` to one site to train; return its weights, or None if rejected."""
    msg = Message(RecordDict({"arrays": arrays, "config": ctx.round_config(rnd, epochs=epochs)}), node, "train", group_id=str(rnd))
    replies = list(ctx.grid.send_and_receive([msg]))
    if not replies:
        ctx.reject(rnd, node, "no reply")
        return None
    problem = reply_problem(replies[0], arrays)
    if problem:
        ctx.reject(rnd, node, problem)
        return None
    return replies[0].content["arrays"]


def node_ids(ctx: ProtocolContext) -> list[int]:
    return sorted(ctx.grid.get_node_ids())
