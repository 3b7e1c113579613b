"""FedAvg with secure aggregation (SecAgg+), run by Flower's own legacy workflow.

Paper: Bell et al. 2020, "Secure single-server aggregation with
(poly)logarithmic complexity" (SecAgg+; after Bonawitz et al. 2017). In the
review it stands with Aono 2017 against an honest-but-curious coordinator:
sites add pairwise and private masks to their quantised, example-weighted
weights; masks cancel in the sum, and the masks of sites that drop out after
sharing keys are rebuilt from Shamir shares held by at least ``threshold``
of their neighbours. The coordinator learns only the sum.

Everything protocol-side is Flower's: ``DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))`` with a legacy ``FedAvg`` in a ``LegacyContext``,
driven on our in-process Grid (it uses only ``send_and_receive`` and
``get_node_ids``). privmed adds the glue: the initial weights and per-round
config (with the array names, which the legacy records drop), and the
harness's evaluation through the legacy strategy's ``evaluate_fn``.
Options: ``threshold`` (shares needed to rebuild a mask; default n_sites - 1),
``clip`` (Flower's clipping range, default 8.0). A site that fails or drops
after the key exchange is recorded as excluded for that round; below the
threshold Flower halts the round and the model is kept.
"""

from __future__ import annotations

import json

import numpy as np

from flwr.app import ArrayRecord, Context, RecordDict
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from privmed.errors import PrivmedError
from privmed.privacy.secagg import KEYS
from privmed.protocols.base import ProtocolContext, node_ids
from privmed.protocols.measured import MeasuredOutput


def run(ctx: ProtocolContext) -> MeasuredOutput:
    n = len(node_ids(ctx))
    threshold = int(ctx.options.get("threshold", max(2, n - 1)))
    if not 2 <= threshold < max(n, 3):
        raise PrivmedError(f"SecAgg+ threshold must be at least 2 and below the number of sites ({n}), got {threshold}")
    keys = list(ctx.initial.keys())
    latest = {"arrays": ctx.initial}

    def to_record(ndarrays) -> ArrayRecord:
        from flwr.app import Array

        return ArrayRecord({k: Array(a) for k, a in zip(keys, ndarrays, strict=True)})

    def fit_config(rnd: int) -> dict:
        return {**dict(ctx.round_config(rnd)), KEYS: json.dumps(keys)}

    def evaluate(rnd: int, ndarrays, config) -> None:
        if rnd > 0:
            latest["arrays"] = to_record(ndarrays)
            _record_exclusions(ctx, rnd, n)
            ctx.evaluate_fn(rnd, latest["arrays"])
        return None

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                      initial_parameters=ndarrays_to_parameters([a.numpy() for a in ctx.initial.values()]),
                      on_fit_config_fn=fit_config, evaluate_fn=evaluate)
    context = LegacyContext(Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=ctx.settings.rounds), strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=threshold,
                                                               clipping_range=float(ctx.options.get("clip", 8.0))))
    workflow(ctx.grid, context)
    if latest["arrays"] is ctx.initial or all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(latest["arrays"].values(), ctx.initial.values())):
        raise PrivmedError("SecAgg+ aggregated no round: the sites lack secaggplus_mod (use --privacy secagg) "
                           f"or fewer than threshold={threshold} sites stayed in every round")
    return MeasuredOutput(latest["arrays"])


def _record_exclusions(ctx: ProtocolContext, rnd: int, n: int) -> None:
    """Sites whose masked update did not arrive in round ``rnd`` (from the Grid's traffic)."""
    traffic = [r for r in ctx.grid.traffic.records if r["round"] == str(rnd)]
    down = {r["node"] for r in traffic if r["direction"] == "down"}
    answered: dict[int, int] = {}
    for r in traffic:
        if r["direction"] == "up":
            answered[r["node"]] = answered.get(r["node"], 0) + 1
    full = max(answered.values(), default=0)
    for node in sorted(down):
        if answered.get(node, 0) < full:
            ctx.reject(rnd, node, "dropped out during secure aggregation (masks rebuilt from shares)")
