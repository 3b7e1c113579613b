"""The site side of SecAgg+ FedAvg: Flower's ``secaggplus_mod`` and a bridge to our train handler.

Paper: Bell et al. 2020, "Secure single-server aggregation with
(poly)logarithmic complexity" (SecAgg+). Privacy name ``secagg``; used with
``--protocol secagg-fedavg``. The masking, key agreement, Shamir sharing and
quantisation are all Flower's (``flwr.client.mod.secaggplus_mod``). SecAgg+
exists only in Flower's legacy workflow API, whose train messages carry
``fitins.*`` records with unnamed arrays; what this file adds is
``legacy_train_bridge``, a mod placed inside ``secaggplus_mod`` that turns the
legacy fit instructions into our ``{"arrays", "config"}`` train message (array
names come in the fit config as ``privmed-keys``), refuses a NaN or
wrong-shaped update before it is masked, and turns the reply back into a
legacy ``FitRes`` for masking.

Faithful: a site's client-side protocol is Flower's SecAgg+ code, unchanged:
only masked, quantised vectors leave the site. Differs: the update refused
before masking (NaN, wrong shape) is this project's check, not the paper's;
the neighbour graph is chosen by the coordinator's workflow (complete, see
:mod:`privmed.protocols.secagg_fedavg`), and in-process the sites' key
pairs live in one process; a deployment runs one ``secaggplus_mod`` per site.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from privmed.engine.validate import update_problem
from privmed.errors import PrivmedError
from privmed.privacy.base import Mechanism

KEYS = "privmed-keys"


def legacy_train_bridge(site: str):
    def mod(msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type != "train" or "fitins.parameters" not in msg.content.array_records:
            return call_next(msg, context)
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        config = dict(fitins.config)
        keys = json.loads(str(config.pop(KEYS)))
        arrays = ArrayRecord({k: Array(a) for k, a in zip(keys, parameters_to_ndarrays(fitins.parameters), strict=True)})
        msg.content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        update = reply.content["arrays"]
        problem = update_problem(update, arrays)
        if problem:
            raise PrivmedError(f"{site}: local update {problem}; not masked")
        metrics = dict(reply.content["metrics"])
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([a.numpy() for a in update.values()]),
                        int(metrics["num-examples"]), metrics)
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    return mod


class SecAggMechanism(Mechanism):
    name = "secagg"

    def __init__(self, options: dict[str, Any]) -> None:
        if options:
            raise PrivmedError(f"secagg takes no parameters (got {sorted(options)}); set threshold and clip as "
                               "protocol options: --opt threshold=3")
        self._names: list[str] = []

    def check(self, fed, config) -> None:
        if config.protocol != "secagg-fedavg":
            raise PrivmedError(f"secagg masks FedAvg updates; use it with --protocol secagg-fedavg, not {config.protocol}")
        self._names = [s.name for s in fed.sites]

    def client_mods(self, site_index: int) -> list:
        if not self._names:
            raise PrivmedError("secagg: call check(fed, config) before building the sites")
        return [secaggplus_mod, legacy_train_bridge(self._names[site_index])]

    def report(self) -> dict[str, Any]:
        return {"epsilon": None, "delta": None, "unit": None, "masking": "SecAgg+ (Flower secaggplus_mod)",
                "individual_updates_visible": False}
