"""What a protocol is, what it gets and returns, and the helpers protocols share.

A protocol is declared once, as a :class:`ProtocolSpec` exported by its
module (``SPEC``): its name and review key, its round function
``run(ctx: ProtocolContext) -> ProtocolOutput``, its options dataclass, its
schedule, what the coordinator sees, its site-side mod if it has one, and
how the harness measures it. The registry, the session, the audit, the
accounting and the deployment read the spec; nothing else tests a
protocol's name.

``run`` sees the Grid, the initial weights, the hyper-parameters and its
typed options, never a site's data. Measurement (validation after each
round) is the harness's ``evaluate_fn``: the sites measure the model on their
own splits and send sums (:func:`privmed.engine.result.evaluate_at_sites`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from privmed.config import TrainSettings
from privmed.engine.validate import NormGuard, reply_problem, update_norm, weights_norm
from privmed.options import NoOptions
from privmed.threat import PARTIES, RELEASED_MODEL, View

__all__ = ["TrainSettings", "TrainInstruction", "ProtocolSpec", "ProtocolContext", "ProtocolOutput", "Predictor"]

# A model the harness can evaluate: one set of weights, or an ensemble of them.
Predictor = ArrayRecord | list[ArrayRecord]

# The coordinator's per-round seed for the sites' local shuffling: seed * ROUND_SEED_STRIDE + round.
# A prime larger than any round count, so (seed, round) pairs never collide.
ROUND_SEED_STRIDE = 100_003

SCHEDULES = ("sequential", "parallel", "one trainer")
# How the coordinator's traffic is measured: every message on the grid; the raw data uploaded once
# (centralised); nothing (a site alone); each site's model once, at the end (ensemble).
TRAFFIC = ("messages", "raw data", "none", "final upload")


@dataclass(frozen=True)
class TrainInstruction:
    """The training instruction a coordinator sends a site in a ``train`` message (its ``config`` record).

    One typed record for both parties: the coordinator builds it with
    :meth:`to_record`, the site reads it with :meth:`from_record` (a protocol
    may add keys of its own to the record; the site ignores them here).
    """

    local_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0  # the round's seed for the site's local shuffling (not privacy randomness)
    server_round: int = 0

    # field -> the record's key (Flower's hyphenated config names)
    KEYS = {"local_epochs": "local-epochs", "lr": "lr", "batch_size": "batch-size", "seed": "seed",
            "server_round": "server-round"}  # fmt: skip

    def to_record(self) -> ConfigRecord:
        default = TrainInstruction()
        return ConfigRecord({k: type(getattr(default, f))(getattr(self, f)) for f, k in self.KEYS.items()})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> TrainInstruction:
        default = cls()
        return cls(**{f: type(getattr(default, f))(record.get(k, getattr(default, f))) for f, k in cls.KEYS.items()})


@dataclass
class ProtocolContext:  # pylint: disable=too-many-instance-attributes
    grid: Grid
    initial: Predictor
    settings: TrainSettings
    seed: int
    # called after each round with (round, predictor); returns the validation metrics
    evaluate_fn: Callable[[int, Predictor], dict]
    options: Any = field(default_factory=NoOptions)  # the protocol's options dataclass
    rejections: list[dict] = field(default_factory=list)
    # a privacy mechanism's wrapper around Flower strategies (identity by default)
    wrap_strategy: Callable[[Strategy], Strategy] = lambda s: s
    # first round to run: > 1 when resuming an interrupted run from its checkpoint,
    # in which case ``initial`` is the checkpointed predictor (as the sites see it: decrypted)
    start_round: int = 1
    # a protocol's own coordinator state between rounds (JSON-able), kept by the checkpoint
    state: dict = field(default_factory=dict)
    # --reproducible-noise: DP noise derived from the run seed (the result must say it is not private)
    reproducible_noise: bool = False
    # node -> the training-set size the site declared (in-process: its data; empty when unknown)
    declared: dict[int, int] = field(default_factory=dict)
    # sequential protocols' bound on update norms (engine/validate.py); after a resume it starts empty
    norms: NormGuard = field(init=False)

    def __post_init__(self) -> None:
        self.norms = NormGuard(self.settings.norm_ratio)

    def round_seed(self, rnd: int) -> int:
        return int(self.seed * ROUND_SEED_STRIDE + rnd)

    def round_config(self, rnd: int, *, epochs: int | None = None) -> ConfigRecord:
        s = self.settings
        return TrainInstruction(
            local_epochs=int(epochs or s.local_epochs),
            lr=s.lr,
            batch_size=s.batch_size,
            seed=self.round_seed(rnd),
            server_round=rnd,
        ).to_record()

    def reject(self, rnd: int, node: int, reason: str) -> None:
        self.rejections.append({"round": rnd, "node": int(node), "reason": reason})

    def rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, salt])


@dataclass(frozen=True)
class CutView:
    """What a party that receives split learning's cut-layer traffic can compute, given the released model.

    ``encode``: images -> the activations the site sends; ``server_output``: images -> the server's output, whose
    loss gradient a U-shaped site returns (None when the labels travel to the server themselves); ``head``: the
    site's head that turns that output into logits (U-shape only).
    """

    encode: Callable[[Any], Any]
    server_output: Callable[[Any], Any] | None = None
    head: Any = None

    @property
    def labels_at_server(self) -> bool:
        return self.server_output is None


@dataclass
class ProtocolOutput:
    predictor: Predictor
    # a protocol's own figures merged into result.json: section ("communication", "runtime", "privacy",
    # "reliability") -> keys
    measured: dict[str, dict] = field(default_factory=dict)


def _every_site(options: Any, n_sites: int) -> tuple[int, ...]:
    return tuple(range(n_sites))


def _rounds(settings: TrainSettings, n_sites: int) -> int:
    return settings.rounds


@dataclass(frozen=True)
class ProtocolSpec:
    """A protocol, declared once: the registry, session, audit, accounting and deployment read this."""

    name: str
    technique: str  # the review's key, e.g. "chang2018-cwt"
    run: Callable[[ProtocolContext], ProtocolOutput]
    # what each curious party receives (privmed.threat): "coordinator", "another site", "eavesdropper"
    views: dict[str, View]
    # which guarantees survive an active (malicious) coordinator, beside the honest-but-curious one the views assume
    active_coordinator: str
    schedule: str  # one of SCHEDULES: how the sites' training adds up in a deployment
    options: type = NoOptions  # frozen dataclass of the protocol's options, parsed strictly
    # the protocol's own site half, as a Flower client mod: (site index, options, *, reproducible_noise) -> Mod
    site_mod: Callable[..., Mod] | None = None
    # the site mod also needs the site's own data (``site=SiteData``): split learning computes activations in it
    site_data: bool = False
    pooled: bool = False  # the harness trains one party holding every site's data (centralised)
    traffic: str = "messages"  # one of TRAFFIC
    # which sites train under the plan (privacy accounting, membership candidates): (options, n_sites) -> indices
    trainers: Callable[[Any, int], tuple[int, ...]] = _every_site
    # how many times the protocol calls ``evaluate_fn`` (SWT: one stage per site)
    rounds: Callable[[TrainSettings, int], int] = _rounds
    # attack -> why it does not apply to this protocol (e.g. no update reaches the coordinator)
    not_applicable: dict[str, str] = field(default_factory=dict)
    # what a site uploads of a one-step update, for the inversion probe: (model, sent, received, options, seed, site)
    probe_upload: Callable[..., tuple[dict, list]] | None = None
    # split learning: (released model, options) -> the :class:`CutView` the activation-inversion audit attacks
    cut_view: Callable[[Any, Any], CutView] | None = None
    # why the protocol cannot run on a Flower deployment (SuperLink + SuperNodes); None: it runs there
    deploy_refusal: str | None = None
    # the coordinator's Flower strategy can be swapped (robust aggregators in the poisoning audit)
    pluggable_strategy: bool = False
    # audit attacks that apply only to protocols that opt in (privmed.audit.OPT_IN_ATTACKS), e.g. "key-recovery"
    extra_attacks: tuple[str, ...] = ()

    @property
    def coordinator_sees(self) -> str:
        return self.views["coordinator"].sees

    def all_views(self) -> dict[str, View]:
        """Every party's view, the model user's included (the released model, whatever the protocol)."""
        return {**self.views, "model user": RELEASED_MODEL}

    @property
    def deployable(self) -> bool:
        return self.deploy_refusal is None

    def __post_init__(self) -> None:
        missing = set(PARTIES) - set(self.views) - {"model user"}
        if missing:
            raise ValueError(f"{self.name}: views must name every party; missing {sorted(missing)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{self.name}: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.traffic not in TRAFFIC:
            raise ValueError(f"{self.name}: traffic must be one of {TRAFFIC}, got {self.traffic!r}")


def train_at(
    ctx: ProtocolContext, node: int, arrays: ArrayRecord, rnd: int, *, epochs: int | None = None
) -> ArrayRecord | None:
    """Send ``arrays`` to one site to train; return its weights, or None if rejected."""
    msg = Message(
        RecordDict({"arrays": arrays, "config": ctx.round_config(rnd, epochs=epochs)}), node, "train", group_id=str(rnd)
    )
    replies = list(ctx.grid.send_and_receive([msg]))
    if not replies:
        ctx.reject(rnd, node, "no reply")
        return None
    problem = reply_problem(replies[0], arrays, declared=ctx.declared.get(node))
    if not problem:
        norm = update_norm(replies[0].content["arrays"], arrays)
        problem = ctx.norms.problem(norm, fallback=weights_norm(arrays))
    if problem:
        ctx.reject(rnd, node, problem)
        return None
    return replies[0].content["arrays"]


def node_ids(ctx: ProtocolContext) -> list[int]:
    return sorted(ctx.grid.get_node_ids())
