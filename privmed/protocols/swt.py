"""Single weight transfer (SWT).

Paper: Chang et al. 2018 (JAMIA); also Sheller et al. 2018. Mechanism: the
model trains to completion at the first institution, then is passed once to
the next, which trains it to completion, and so on; it never returns. This
is where catastrophic forgetting shows (Sheller: Dice 0.841 -> 0.701 from 4
to 32 institutions). Faithful: one pass, each institution trains for the
whole budget (rounds x local epochs). Differs: the hand-over goes through the
coordinator. One "round" in the history is one institution's stage.
"""

from __future__ import annotations

from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids, train_at
from privmed.threat import UPDATE, View


def run(ctx: ProtocolContext) -> ProtocolOutput:
    arrays = ctx.initial
    budget = ctx.settings.rounds * ctx.settings.local_epochs
    for stage, node in enumerate(node_ids(ctx), start=1):
        if stage < ctx.start_round:
            continue
        arrays = train_at(ctx, node, arrays, stage, epochs=budget) or arrays
        ctx.evaluate_fn(stage, arrays)
    return ProtocolOutput(arrays)


SPEC = ProtocolSpec(
    name="swt",
    technique="chang2018-swt",
    run=run,
    views={
        "coordinator": View(UPDATE, "the model weights after each site's stage"),
        "another site": View(UPDATE, "the model the previous site trained to completion"),
        "eavesdropper": View(UPDATE, "the model weights after each stage, in the clear without TLS"),
    },
    active_coordinator="nothing: it can read, alter or withhold every model it relays",
    schedule="sequential",
    rounds=lambda settings, n_sites: n_sites,
)
