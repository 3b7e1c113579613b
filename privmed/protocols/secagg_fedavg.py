"""FedAvg with secure aggregation (SecAgg+), run by Flower's own legacy workflow.

Paper: Bell et al. 2020, "Secure single-server aggregation with
(poly)logarithmic complexity" (SecAgg+; after Bonawitz et al. 2017). In the
review it stands with Aono 2017 against an honest-but-curious coordinator:
sites add pairwise and private masks to their quantised, example-weighted
weights; masks cancel in the sum, and the masks of sites that drop out after
sharing keys are rebuilt from Shamir shares held by at least ``threshold``
of their neighbours. The coordinator learns only the sum.

Faithful: the masking, key agreement, Shamir sharing, dropout recovery and
quantisation are Flower's implementation of SecAgg+, unchanged; the
coordinator sees only masked vectors and their sum. The neighbour graph is
Bell et al.'s: each site shares keys, Shamir shares and pairwise masks with
k = 2·ceil(log2 n) others (:func:`neighbourhood`: ``num_shares`` = k + 1
counting its own share, at most n), on Flower's ring-shaped graph over a
shuffled site order, instead of all n - 1 as in Bonawitz et al. 2017 (option
``graph = "complete"`` for that). Below 10 sites the two coincide or nearly
(4 sites: complete). Reconstruction threshold: a strict majority of a site's
shares (``num_shares // 2 + 1``, at least 2) unless ``threshold`` says
otherwise; a dropped site's mask is rebuilt from that many neighbours.
Differs: Bell et al. pick the graph at random (Harary-like with random
labels: Flower shuffles the ring), and their k also depends on the tolerated
fractions of dropped and corrupted sites, which privmed does not set.
Flower's protocol is the honest-but-curious variant (no signatures nor
consistency round against an active server).

Everything protocol-side is Flower's: ``DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))`` with a legacy ``FedAvg`` in a ``LegacyContext``,
driven on our in-process Grid (it uses only ``send_and_receive`` and
``get_node_ids``). privmed adds the glue: the initial weights and per-round
config (with the array names, which the legacy records drop), and the
harness's evaluation through the legacy strategy's ``evaluate_fn``.
Options: ``graph`` ("log", Bell et al., default; or "complete"),
``threshold`` (shares needed to rebuild a mask: a whole number from 2 to
below the number of shares; default a strict majority), ``clip`` (Flower's
clipping range, default 8.0). A site that fails or drops in any stage is
recorded as excluded for that round (``WatchedGrid`` notes it as the
workflow's messages pass); below the threshold Flower halts the round and
the model is kept.

The site half (privacy name ``secagg``: :class:`SecAggMechanism` below) is
Flower's ``secaggplus_mod`` with ``legacy_train_bridge`` inside it: a mod
that turns the legacy fit instructions (``fitins.*`` records with unnamed
arrays; the names come in the fit config as ``privmed-keys``) into privmed's
``{"arrays", "config"}`` train message, refuses a NaN or wrong-shaped update
before it is masked (this project's check, not the paper's), and turns the
reply back into a legacy ``FitRes`` for masking. In-process the sites' key
pairs live in one process; a deployment runs one ``secaggplus_mod`` per site.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from privmed.engine.validate import train_checked
from privmed.errors import PrivmedError
from privmed.options import Options
from privmed.privacy.base import Mechanism
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.threat import AGGREGATE, CIPHERTEXT, View

KEYS = "privmed-keys"
GRAPHS = ("log", "complete")


def neighbourhood(n_sites: int) -> int:
    """Bell et al.'s O(log n) neighbourhood: 2·ceil(log2 n) neighbours plus the site itself, odd, at most n."""
    return min(n_sites, 2 * math.ceil(math.log2(max(n_sites, 2))) + 1)


@dataclass(frozen=True)
class SecAggOptions(Options):
    graph: str = "log"  # neighbours: "log" (Bell et al. 2020, O(log n)) or "complete" (Bonawitz et al. 2017)
    threshold: int | None = None  # shares needed to rebuild a mask; default a strict majority of the shares
    clip: float = 8.0  # Flower's clipping range before quantisation

    def __post_init__(self) -> None:
        if self.graph not in GRAPHS:
            raise PrivmedError(f"unknown SecAgg+ graph {self.graph!r}; valid graphs: {', '.join(GRAPHS)}")

    def shares(self, n_sites: int) -> int:
        """Shares of each site's keys (its neighbours and itself) on this graph."""
        return neighbourhood(n_sites) if self.graph == "log" else n_sites

    def reconstruction_threshold(self, n_sites: int) -> int:
        return self.threshold or max(2, self.shares(n_sites) // 2 + 1)

    def check_sites(self, n_sites: int) -> None:
        top = max(2, self.shares(n_sites) - 1)
        if self.threshold is not None and not 2 <= self.threshold <= top:
            raise PrivmedError(
                f"SecAgg+ threshold must be a whole number from 2 to {top} with {n_sites} sites (at least 2, and below "
                f"the number of shares, {self.shares(n_sites)} on the {self.graph} graph, when there are 3 or more), "
                f"got {self.threshold!r}; e.g. --opt threshold={top}"
            )
        if not self.clip > 0:
            raise PrivmedError(f"SecAgg+ clip (Flower's clipping range) must be > 0, got {self.clip}")


def run(ctx: ProtocolContext) -> ProtocolOutput:
    n = len(node_ids(ctx))
    done = ctx.start_round - 1  # rounds run before a resume: Flower's workflow numbers its rounds from 1
    ctx.options.check_sites(n)
    shares, threshold = ctx.options.shares(n), ctx.options.reconstruction_threshold(n)
    # Flower: an int count must exceed 2 (below, 1.0 = every site, the same graph)
    num_shares: int | float = shares if shares > 2 and shares < n else 1.0
    keys = list(ctx.initial.keys())
    grid = WatchedGrid(ctx.grid, rounds_done=done)
    latest = {"arrays": ctx.initial}

    def to_record(ndarrays) -> ArrayRecord:
        return ArrayRecord({k: Array(a) for k, a in zip(keys, ndarrays, strict=True)})

    def fit_config(rnd: int) -> dict:
        return {**dict(ctx.round_config(done + rnd)), KEYS: json.dumps(keys)}

    def evaluate(rnd: int, ndarrays, config) -> None:
        if rnd > 0:
            latest["arrays"] = to_record(ndarrays)
            for node, reason in sorted(grid.excluded.get(done + rnd, {}).items()):
                ctx.reject(done + rnd, node, reason)
            ctx.evaluate_fn(done + rnd, latest["arrays"])
        return None

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters([a.numpy() for a in ctx.initial.values()]),
        on_fit_config_fn=fit_config,
        evaluate_fn=evaluate,
    )
    context = LegacyContext(
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=ctx.settings.rounds - done),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=num_shares, reconstruction_threshold=threshold, clipping_range=ctx.options.clip
        )
    )
    workflow(grid, context)
    unchanged = all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(latest["arrays"].values(), ctx.initial.values())
    )
    if unchanged:
        raise PrivmedError(
            "SecAgg+ aggregated no round: the sites lack secaggplus_mod (use --privacy secagg) "
            f"or fewer than threshold={threshold} sites stayed in every round"
        )
    return ProtocolOutput(latest["arrays"])


class WatchedGrid(Grid):
    """Delegates to the run's Grid and notes, per round, which sites dropped out or failed in any stage.

    Messages carry the run's round number (Flower's plus ``rounds_done`` on a resume), so bytes are filed by it.
    """

    def __init__(self, grid: Grid, rounds_done: int = 0) -> None:
        self.grid, self.offset = grid, rounds_done
        self.excluded: dict[int, dict[int, str]] = {}

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def _renumber(self, messages) -> list:
        messages = list(messages)
        for m in messages:
            if self.offset and m.metadata.group_id.isdigit() and int(m.metadata.group_id) > 0:
                m.metadata.group_id = str(int(m.metadata.group_id) + self.offset)
        return messages

    def push_messages(self, messages):
        return self.grid.push_messages(self._renumber(messages))

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        messages = self._renumber(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        answered = {r.metadata.src_node_id: r for r in replies}
        for m in messages:
            reply = answered.get(m.metadata.dst_node_id)
            if reply is None or reply.has_error():
                reason = (
                    "dropped out during secure aggregation (no reply)"
                    if reply is None
                    else f"site error: {reply.error.reason}"
                )
                self.excluded.setdefault(int(m.metadata.group_id), {}).setdefault(m.metadata.dst_node_id, reason)
        return replies


# ----------------------------------------------------------------------------- the site half


def legacy_train_bridge(site: str):
    def mod(msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type != "train" or "fitins.parameters" not in msg.content.array_records:
            return call_next(msg, context)
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        config = dict(fitins.config)
        keys = json.loads(str(config.pop(KEYS)))
        arrays = ArrayRecord(
            {k: Array(a) for k, a in zip(keys, parameters_to_ndarrays(fitins.parameters), strict=True)}
        )
        update, reply = train_checked(
            msg, context, call_next, arrays, ConfigRecord(config), site=site, refused="not masked"
        )
        if reply.has_error():
            return reply
        metrics = dict(reply.content["metrics"])
        fitres = FitRes(
            Status(Code.OK, ""),
            ndarrays_to_parameters([a.numpy() for a in update.values()]),
            int(metrics["num-examples"]),
            metrics,
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    return mod


def scrub_plaintext(msg: Message, context: Context, call_next) -> Message:
    """Outside ``secaggplus_mod``: drop the plaintext the legacy reply still carries beside the masked vector.

    Flower's mod masks the example-weighted update (the weight travels inside
    the mask) but leaves the legacy ``FitRes`` metrics and example count in the
    clear; the coordinator's legacy FedAvg then averages identical unmasked
    sums, for which a uniform count of 1 gives the same result.
    """
    reply = call_next(msg, context)
    content = reply.content if not reply.has_error() else None
    if content is not None and "fitres.num_examples" in content.metric_records:
        content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": 1})
        content.config_records["fitres.metrics"] = ConfigRecord()
    return reply


class SecAggMechanism(Mechanism):
    name = "secagg"

    protocols = ("secagg-fedavg",)
    purpose = "masks FedAvg updates"
    encrypts = True

    def __init__(self, options: dict[str, Any]) -> None:
        if options:
            raise PrivmedError(
                f"secagg takes no parameters (got {sorted(options)}); set threshold and clip as "
                "protocol options: --opt threshold=3"
            )
        self._names: list[str] = []

    def check(self, plan) -> None:
        self._names = [name for name, _ in plan.sites]

    def client_mods(self, site_index: int) -> list:
        if not self._names:
            raise PrivmedError("secagg: call check(plan) before building the sites")
        return [scrub_plaintext, secaggplus_mod, legacy_train_bridge(self._names[site_index])]

    def report(self) -> dict[str, Any]:
        return {
            "epsilon": None,
            "delta": None,
            "unit": None,
            "masking": "SecAgg+ (Flower secaggplus_mod)",
        }


SPEC = ProtocolSpec(
    name="secagg-fedavg",
    technique="bell2020-secaggplus",
    run=run,
    views={
        "coordinator": View(AGGREGATE, "only the sum of the sites' masked, quantised weights"),
        "another site": View(AGGREGATE, "the global model after every round (the sum of all updates)"),
        "eavesdropper": View(CIPHERTEXT, "masked vectors and encrypted key shares"),
    },
    active_coordinator="not guaranteed: Flower's SecAgg+ is the honest-but-curious variant (no signatures, no "
    "consistency check); an active coordinator that reports sites as dropped can unmask one site's update",
    schedule="parallel",
    options=SecAggOptions,
)
