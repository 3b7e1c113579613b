"""Federated averaging (FedAvg).

Paper: McMahan et al. 2017; for medical segmentation, Sheller et al. 2018
(data-size-weighted averaging, one local epoch per round). Mechanism: each
round every site trains the global model locally, the coordinator averages
the returned weights weighted by the number of training examples. This is
Flower's own ``FedAvg`` strategy run by its own round loop
(``Strategy.start``); privmed adds only a wrapper that checks every reply
(engine/validate.py: records, metrics, ``num-examples``, weights, update
norm against the other sites' median) before Flower averages the rest:
Flower's FedAvg would average a NaN or huge update in, weight by any
``num-examples`` a site claims, and abort the run on one malformed reply.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from privmed.engine.validate import by_destination, odd_metric_keys, outliers, reply_problem, update_norm, weights_norm
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.threat import AGGREGATE, UPDATE, View


class RejectInvalidUpdates(Strategy):
    """Wrap a Flower strategy: drop the train replies the coordinator cannot trust, record which site and why.

    A reply is filed under the node the train message went to (by the id it
    replies to), not its source: an error reply the SuperLink makes for a
    node that failed comes from node 1, the SuperLink itself.
    """

    def __init__(self, strategy: Strategy, ctx: ProtocolContext, *, rounds_done: int = 0) -> None:
        self.strategy, self.ctx, self.offset = strategy, ctx, rounds_done
        self._sent: ArrayRecord | None = None
        self._messages: list[Message] = []

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = arrays
        rnd = self.offset + server_round  # the run's round number, also after a resume
        messages = list(self.strategy.configure_train(rnd, arrays, config, grid))
        for msg in messages:  # Flower leaves group_id empty; the engine counts bytes per round by it
            msg.metadata.group_id = str(rnd)
        self._messages = messages  # the Grid sets their ids when it sends them
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd, ctx = self.offset + server_round, self.ctx
        answered = by_destination(self._messages, replies)
        problems = {n: "no reply" for m in self._messages if (n := m.metadata.dst_node_id) not in answered}
        for node, reply in answered.items():
            problem = reply_problem(reply, self._sent, declared=ctx.declared.get(node))
            if problem:
                problems[node] = problem
        kept = {n: r for n, r in answered.items() if n not in problems}
        problems.update(odd_metric_keys(kept))
        norms = {n: update_norm(r.content["arrays"], self._sent) for n, r in kept.items() if n not in problems}
        problems.update(outliers(norms, ratio=ctx.settings.norm_ratio, fallback=weights_norm(self._sent)))
        for node in sorted(problems):
            ctx.reject(rnd, node, problems[node])
        return self.strategy.aggregate_train(rnd, [r for n, r in kept.items() if n not in problems])

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(self.offset + server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(self.offset + server_round, [r for r in replies if not r.has_error()])


def make_strategy(n_sites: int) -> FedAvg:
    # Federated evaluation is off: the harness measures the global model itself.
    return FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_sites, min_available_nodes=n_sites)


def run(ctx: ProtocolContext, strategy: Strategy | None = None) -> ProtocolOutput:
    n = len(node_ids(ctx))
    done = ctx.start_round - 1  # rounds already run before a resume
    wrapped = RejectInvalidUpdates(ctx.wrap_strategy(strategy or make_strategy(n)), ctx, rounds_done=done)
    config = ctx.round_config(0)

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        if rnd > 0:
            ctx.evaluate_fn(done + rnd, arrays)
        config["seed"] = ctx.round_seed(done + rnd + 1)  # next round's local shuffling
        return None

    result = wrapped.start(
        ctx.grid, ctx.initial, num_rounds=ctx.settings.rounds - done, train_config=config, evaluate_fn=evaluate_fn
    )
    return ProtocolOutput(result.arrays if result.arrays is not None else ctx.initial)


SPEC = ProtocolSpec(
    name="fedavg",
    technique="mcmahan2017-fedavg",
    run=run,
    views={
        "coordinator": View(UPDATE, "each site's model weights after local training, every round"),
        "another site": View(AGGREGATE, "the global model after every round (the mean of all sites' updates)"),
        "eavesdropper": View(UPDATE, "each site's model weights, in the clear without TLS"),
    },
    active_coordinator="nothing: it sees every update and can send each site a model of its choosing",
    schedule="parallel",
    deployable=True,
    pluggable_strategy=True,
)
