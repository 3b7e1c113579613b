"""The site side of HE-FedAvg (Aono 2017): keys, and a client mod that decrypts and encrypts.

Privacy names ``he-paillier`` and ``he-ckks``; used with the ``he-fedavg``
protocol (``privmed train --protocol he-fedavg --privacy he-ckks``).
The keyring is generated once among the sites (in-process: by this object,
which lives on the sites' side); the coordinator asks a site for the public
material (a ``train`` message holding a ``he-setup`` record) and never sees the secret key.

The mod, for every ``train`` message: decrypts the encrypted global model
(``"he"`` record: sum of weighted updates, divided by the weight of the
sites that contributed) or takes the public initial weights (round 1);
runs the site's train handler; refuses a NaN or wrong-shaped local update
before encrypting (the site's error names it; the coordinator excludes the
site for the round); encrypts ``n_i / N * weights`` and replies with the
ciphertext and the metrics (plus the site's decryption/encryption seconds).
"""

from __future__ import annotations

import time
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from privmed.engine.validate import update_problem
from privmed.errors import PrivmedError
from privmed.privacy.base import Mechanism
from privmed.privacy.he import Keyring, make_keyring
from privmed.privacy.sealed import flatten, n_values, sealed_record, unflatten

# A site's ClientApp registers only "train" and "evaluate" handlers, and Flower runs
# mods only around registered handlers: the set-up request is a "train" message
# carrying this record, answered by the mod (like Flower's secaggplus_mod stages).
SETUP = "he-setup"
PARAMS = {"paillier": ("key_bits", "bits", "clip"), "ckks": ("poly_modulus_degree", "scale_bits")}


def decrypt_global(keyring: Keyring, rec: ConfigRecord) -> ArrayRecord:
    """The global model from the coordinator's encrypted sum."""
    layout = str(rec["layout"])
    vec = keyring.decrypt(bytes(rec["ciphertext"]), n_values=n_values(layout), count=int(rec["count"]))
    return unflatten(vec / float(rec["weight-sum"]), layout)


def he_mod(keyring: Keyring, *, n_examples: int, site: str):
    def mod(msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type != "train":
            return call_next(msg, context)
        if SETUP in msg.content.config_records:
            public = ConfigRecord({"scheme": keyring.scheme, "public": keyring.public(), "key-id": keyring.key_id,
                                   "num-examples": int(n_examples)})
            return Message(RecordDict({"he-public": public}), reply_to=msg)
        t0 = time.perf_counter()
        content = msg.content
        arrays = decrypt_global(keyring, content["he"]) if "he" in content.config_records else content["arrays"]
        t_dec = time.perf_counter() - t0
        msg.content = RecordDict({"arrays": arrays, "config": content["config"]})
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        update = reply.content["arrays"]
        problem = update_problem(update, arrays)
        if problem:
            raise PrivmedError(f"{site}: local update {problem}; not encrypted")
        t0 = time.perf_counter()
        ct = keyring.encrypt(flatten(update) * (n_examples / int(content["config"]["he-total-examples"])))
        metrics = dict(reply.content["metrics"])
        metrics.update({"he-decrypt-s": t_dec, "he-encrypt-s": time.perf_counter() - t0})
        out = RecordDict({"he": ConfigRecord({"ciphertext": ct, "key-id": keyring.key_id}), "metrics": MetricRecord(metrics)})
        return Message(out, reply_to=msg)

    return mod


class HEMechanism(Mechanism):
    def __init__(self, scheme: str, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(PARAMS[scheme]))
        if unknown:
            raise PrivmedError(f"unknown he-{scheme} parameter {unknown[0]!r}; valid: {', '.join(PARAMS[scheme])}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in options.values()):
            raise PrivmedError(f"he-{scheme} parameters must be numbers, got {options}")
        self.name, self.scheme, self.options = f"he-{scheme}", scheme, dict(options)
        self.keyring: Keyring | None = None
        self._sites: list[tuple[str, int]] = []

    def check(self, fed, config) -> None:
        if config.protocol != "he-fedavg":
            raise PrivmedError(f"{self.name} encrypts FedAvg updates; use it with --protocol he-fedavg, not {config.protocol}")
        self._sites = [(s.name, len(s.train)) for s in fed.sites]
        self.keyring = make_keyring(self.scheme, n_sites=len(fed.sites), **self.options)

    def client_mods(self, site_index: int) -> list:
        if self.keyring is None:
            raise PrivmedError(f"{self.name} has no keys yet: call check(fed, config) before building the sites")
        name, n = self._sites[site_index]
        return [he_mod(self.keyring, n_examples=n, site=name)]

    def reveal(self, predictor):
        """The global model as a site decrypts it (for the harness's evaluation)."""
        rec = sealed_record(predictor)
        return predictor if rec is None else decrypt_global(self.keyring, rec)

    def report(self) -> dict[str, Any]:
        return {"epsilon": None, "delta": None, "unit": None, "encryption": self.name, "individual_updates_visible": False,
                "coordinator_holds": "public key / public context only", **self.options}
