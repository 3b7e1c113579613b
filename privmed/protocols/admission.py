"""Admission ensemble: local models admitted by cross-site validation, weighted by rank, the weaker half pruned.

Paper: Amir-Khalili et al. 2017, "Scalable and fault tolerant platform for
distributed learning on private medical data" (MICCAI workshop, InsuLearn;
the review's fault-tolerant platform row). Mechanism, as the paper describes
it: every institution trains a model on its own data only; a model is
validated at the *other* institutions and admitted to the ensemble once it
has been validated on more than 60 % of their data; admitted models are
weighted by their validation rank and those below the median are pruned;
institutions may join and leave between rounds and the system stays live.

Faithful: local-only training (no averaging), cross-validation at the other
sites on their own validation splits, admission at > ``admit_fraction`` (0.6)
of the other sites' validation examples, rank weights (best of k admitted
models weighs k, the worst 1), pruning of the models ranked below the median,
liveness: a site that fails, is offline or leaves keeps its last model and
its admission is re-decided each round from the sites that answered; a site
that (re)joins trains from its last model.

Differs: InsuLearn's coordinator is a replicated state machine (Raft) that
tolerates coordinator failures; here the coordinator is one ServerApp and a
checkpoint (``privmed train --resume``). Models are ranked by their
example-weighted validation *loss* (task-independent; InsuLearn used the
error rate). The rank weights are realised by listing a model as many times
as its weight in the ensemble the harness evaluates (an unweighted mean of
the listed members' probabilities). Every site receives the other sites'
models to validate them, as in InsuLearn: a site sees its peers' weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from privmed.engine.validate import reply_problem
from privmed.errors import PrivmedError
from privmed.options import Options
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.threat import UPDATE, View


@dataclass(frozen=True)
class AdmissionOptions(Options):
    admit_fraction: float = 0.6  # a model is admitted once validated on more than this share of the others' data
    prune: bool = True  # drop the admitted models ranked below the median

    def __post_init__(self) -> None:
        if not 0.0 <= self.admit_fraction < 1.0:
            raise PrivmedError(f"admit_fraction must be in [0, 1), got {self.admit_fraction}")


def rank_weights(losses: dict[int, float], *, prune: bool) -> dict[int, int]:
    """Integer ensemble weights: the best (lowest loss) of k models weighs k, the worst 1; ties broken by site.

    With ``prune``, models whose loss is above the median are dropped first
    (of an even number, the worse half).
    """
    order = sorted(losses, key=lambda n: (losses[n], n))
    if prune and len(order) > 1:
        order = order[: (len(order) + 1) // 2]
    return {n: len(order) - i for i, n in enumerate(order)}


def admitted(coverage: dict[int, float], fraction: float) -> list[int]:
    return sorted(n for n, c in coverage.items() if c > fraction)


def _train_all(ctx: ProtocolContext, models: dict[int, ArrayRecord], rnd: int) -> dict[int, ArrayRecord]:
    msgs = {
        n: Message(RecordDict({"arrays": m, "config": ctx.round_config(rnd)}), n, "train", group_id=str(rnd))
        for n, m in models.items()
    }
    replies = {r.metadata.src_node_id: r for r in ctx.grid.send_and_receive(list(msgs.values()))}
    out = {}
    for n in msgs:
        problem = "no reply" if n not in replies else reply_problem(replies[n], models[n])
        if problem:
            ctx.reject(rnd, n, problem)  # the site keeps its last model; it may come back next round
        else:
            out[n] = replies[n].content["arrays"]
    return out


def _cross_validate(
    ctx: ProtocolContext, trained: dict[int, ArrayRecord], nodes: list[int], rnd: int
) -> dict[int, dict[int, tuple[float, float]]]:
    """model owner -> validating site -> (validation loss, validation examples), from every site that answered."""
    pairs, msgs = [], []
    for owner, arrays in trained.items():
        for site in nodes:
            if site != owner:
                msgs.append(Message(RecordDict({"arrays": arrays, "config": ConfigRecord({})}), site, "evaluate",
                                    group_id=str(rnd)))  # fmt: skip
                pairs.append((owner, site))
    replies = list(ctx.grid.send_and_receive(msgs))
    by_id = {m.metadata.message_id: pair for m, pair in zip(msgs, pairs)}
    out: dict[int, dict[int, tuple[float, float]]] = {owner: {} for owner in trained}
    for reply in replies:
        pair = by_id.get(reply.metadata.reply_to_message_id)
        if pair is None or reply.has_error() or "metrics" not in reply.content.metric_records:
            continue
        m = reply.content.metric_records["metrics"]
        if "loss" in m and np.isfinite(float(m["loss"])):
            out[pair[0]][pair[1]] = (float(m["loss"]), float(m["num-examples"]))
    return out


def run(ctx: ProtocolContext) -> ProtocolOutput:
    nodes = node_ids(ctx)
    start = ctx.initial if isinstance(ctx.initial, list) else [ctx.initial] * len(nodes)
    models = dict(zip(nodes, start[: len(nodes)])) if len(start) >= len(nodes) else dict.fromkeys(nodes, start[0])
    val_size: dict[int, float] = {int(k): v for k, v in ctx.state.get("val_size", {}).items()}
    log = list(ctx.state.get("admission", []))
    ever = {int(n) for n in ctx.state.get("trained", [])}  # sites whose model is their own (not the initial one)
    ensemble = list(start)
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        trained = _train_all(ctx, models, rnd)
        models.update(trained)
        ever |= set(trained)
        scores = _cross_validate(ctx, {n: models[n] for n in sorted(ever)}, nodes, rnd)
        for by_site in scores.values():
            val_size.update({site: n for site, (_, n) in by_site.items()})
        coverage, loss = {}, {}
        for owner, by_site in scores.items():
            others = sum(v for s, v in val_size.items() if s != owner)
            seen = sum(n for _, n in by_site.values())
            coverage[owner] = seen / others if others else 0.0
            if seen:
                loss[owner] = sum(l * n for l, n in by_site.values()) / seen  # noqa: E741
        chosen = [n for n in admitted(coverage, ctx.options.admit_fraction) if n in loss and n in ever]
        weights = rank_weights({n: loss[n] for n in chosen}, prune=ctx.options.prune)
        if weights:
            ensemble = [models[n] for n in sorted(weights) for _ in range(weights[n])]
        log.append(
            {
                "round": rnd,
                "trained": sorted(trained),
                "coverage": {str(n): round(c, 4) for n, c in coverage.items()},
                "validation_loss": {str(n): round(v, 6) for n, v in loss.items()},
                "admitted": chosen,
                "weights": {str(n): w for n, w in weights.items()},
            }
        )
        ctx.state.update(val_size={str(k): v for k, v in val_size.items()}, admission=log, trained=sorted(ever))
        ctx.evaluate_fn(rnd, ensemble)
    return ProtocolOutput(ensemble, measured={"reliability": {"admission": log}})


SPEC = ProtocolSpec(
    name="admission",
    technique="amirkhalili2017-insulearn",
    run=run,
    views={
        "coordinator": View(UPDATE, "each site's own model weights and its validation loss at every other site"),
        "another site": View(UPDATE, "every other site's own model (it validates them)"),
        "eavesdropper": View(UPDATE, "each site's own model weights, in the clear without TLS"),
    },
    active_coordinator="nothing: it holds every site's model and decides which are admitted",
    schedule="parallel",
    options=AdmissionOptions,
    traffic="messages",
)
