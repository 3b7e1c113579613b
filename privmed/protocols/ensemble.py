"""Model ensembling (ME).

Paper: Chang et al. 2018 (JAMIA). Mechanism: each institution trains its own
model on its own data only; predictions are the average of the models'
output probabilities. Faithful: independent models, unweighted average of
softmax outputs. Differs: none of substance; the history evaluates the
ensemble after each round of local training so curves compare with the
others.
"""

from __future__ import annotations

from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids, train_at
from privmed.threat import NOTHING, UPDATE, View


def run(ctx: ProtocolContext) -> ProtocolOutput:
    nodes = node_ids(ctx)
    start = ctx.initial if isinstance(ctx.initial, list) else [ctx.initial] * len(nodes)
    models = dict(zip(nodes, start))
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        for n in nodes:
            models[n] = train_at(ctx, n, models[n], rnd) or models[n]
        ctx.evaluate_fn(rnd, list(models.values()))
    return ProtocolOutput(list(models.values()))


SPEC = ProtocolSpec(
    name="ensemble",
    technique="chang2018-me",
    run=run,
    views={
        "coordinator": View(UPDATE, "each site's own model weights"),
        "another site": View(NOTHING, "nothing (each site trains its own model)"),
        "eavesdropper": View(UPDATE, "each site's own model weights, in the clear without TLS"),
    },
    active_coordinator="nothing: it holds every site's model",
    schedule="parallel",
    traffic="final upload",
)
