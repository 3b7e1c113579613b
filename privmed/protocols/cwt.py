"""Cyclic weight transfer (CWT).

Paper: Chang et al. 2018, "Distributed deep learning networks among
institutions for medical imaging" (JAMIA); compared with FL for segmentation
by Sheller et al. 2018 (BrainLes). Mechanism, as in the paper: one model
visits the institutions in turn, training a fixed number of epochs at each;
a cycle over all institutions is one round, repeated. Faithful: fixed-order
cycling with E epochs per visit; the weights are the only thing that moves.
Differs: the paper passes the model from institution to institution
directly; here it passes through the coordinator (a relay that could be
replaced by the encrypted peer-to-peer transfer of the SNT/FNT protocols).
Options: ``order`` = "fixed" (default, as in the paper) or "shuffled" (a new
random order each cycle). A site whose update is rejected is skipped for that
visit; the model carries on from the previous site.
"""

from __future__ import annotations

from dataclasses import dataclass

from privmed.errors import PrivmedError
from privmed.options import Options
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids, train_at
from privmed.threat import UPDATE, View

ORDERS = ("fixed", "shuffled")


@dataclass(frozen=True)
class CWTOptions(Options):
    order: str = "fixed"

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise PrivmedError(f"unknown CWT order {self.order!r}; valid orders: {', '.join(ORDERS)}")


def run(ctx: ProtocolContext) -> ProtocolOutput:
    order = ctx.options.order
    nodes = node_ids(ctx)
    arrays = ctx.initial
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        visit = list(ctx.rng(salt=rnd).permutation(nodes)) if order == "shuffled" else nodes
        for node in visit:
            arrays = train_at(ctx, int(node), arrays, rnd) or arrays
        ctx.evaluate_fn(rnd, arrays)
    return ProtocolOutput(arrays)


SPEC = ProtocolSpec(
    name="cwt",
    technique="chang2018-cwt",
    run=run,
    views={
        "coordinator": View(UPDATE, "the model weights after every site visit"),
        "another site": View(UPDATE, "the model the previous site in the cycle trained"),
        "eavesdropper": View(UPDATE, "the model weights after every site visit, in the clear without TLS"),
    },
    active_coordinator="nothing: it can read, alter or withhold every model it relays",
    schedule="sequential",
    options=CWTOptions,
)
