"""One institution alone, and centralised (pooled) training.

The review's two reference points: each hospital training only on its own
data (the lower bound every collaborative protocol must beat), and pooling
every hospital's data in one place (the non-private upper bound; the
harness builds a one-site grid holding the pooled data and counts the raw
data's bytes as communication). Option ``site``: which site trains alone.
"""

from __future__ import annotations

from privmed.errors import PrivmedError
from privmed.protocols.base import ProtocolContext, ProtocolOutput, node_ids, train_at


def run(ctx: ProtocolContext) -> ProtocolOutput:
    nodes = node_ids(ctx)
    site = int(ctx.options.get("site", 0))
    if not 0 <= site < len(nodes):
        raise PrivmedError(f"site index {site} out of range: this run has sites 0..{len(nodes) - 1}")
    arrays = ctx.initial
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        arrays = train_at(ctx, nodes[site], arrays, rnd) or arrays
        ctx.evaluate_fn(rnd, arrays)
    return ProtocolOutput(arrays)
