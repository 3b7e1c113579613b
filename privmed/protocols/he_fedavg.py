"""FedAvg over additively homomorphic encryption (HE-FedAvg).

Paper: Aono et al. 2017, "Privacy-preserving deep learning via additively
homomorphic encryption" (IEEE TIFS). Mechanism: the sites share a secret
key; each round every site encrypts its update, the coordinator adds the
ciphertexts and returns the encrypted sum; the sites decrypt it. Faithful:
the coordinator holds only the public key (Paillier) or a public TenSEAL
context (CKKS), adds ciphertexts, and never sees a plaintext update nor the
plaintext global model. Differs: Aono encrypted gradients of asynchronous
SGD; here, FedAvg-weighted model weights (``n_i / N * w_i``, N announced by
the coordinator) once per round, so the decrypted sum is the FedAvg model.
The sites reveal their training-set sizes, as in plain FedAvg.

Set-up (round 0): every site sends the public key material and its
training-set size; a site that does not answer stops the run before
training (the weights ``n_i / N`` need every site's count).
Rounds: round 1 sends the public initial weights; later rounds send the
encrypted sum of the previous round. A resumed run (``--resume``) sets up
new keys (the old ones died with the interrupted process) and starts from
the checkpointed model, which the sites had decrypted, as from public
weights; a deployed coordinator, which holds no key, checkpointed the
encrypted sum, and the resumed run sends it to the sites as a later round
does (the sites' keyring file still opens it). A reply that is an error, carries no
ciphertext, names another key, or whose ciphertext is truncated or
malformed is rejected (recorded; the round goes on without that site); the
sum then covers the remaining sites and says so (``count``, ``weight-sum``).
The site side (keys, decryption, encryption) is the second half of this
module; the schemes (Paillier, CKKS) are in :mod:`privmed.privacy.he`.

The site half: keys, and a client mod that decrypts and encrypts.

Privacy names ``he-paillier``, ``he-ckks`` and ``he-stream`` (the fastest: ~1x
FedAvg's bytes and time, see :mod:`privmed.privacy.he_stream`); used with the
``he-fedavg`` protocol (``privmed train --protocol he-fedavg --privacy he-stream``).
The keyring is generated once among the sites (in-process: by this object,
which lives on the sites' side; on a Flower deployment, where every SuperNode
is its own process, it is made once with
:func:`privmed.privacy.he.write_keyring` and each site loads that file,
option ``keyring_file``: the key distribution is out of band, as Aono et al.
assume); the coordinator asks a site for the public
material (a ``train`` message holding a ``he-setup`` record) and never sees the secret key.
On an ``evaluate`` message from the harness the mod decrypts the model the
coordinator holds (the encrypted sum) before the site measures it.

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

from privmed.engine.validate import by_destination, reply_problem, train_checked
from privmed.errors import PrivmedError
from privmed.evaluation import EVAL
from privmed.privacy.base import Mechanism, Plan
from privmed.privacy.he import Keyring, load_keyring, make_aggregator, make_keyring
from privmed.privacy.sealed import flatten, layout_of, n_values, seal_predictor, sealed_record, unflatten, unsealed
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.threat import AGGREGATE, CIPHERTEXT, View

# A site's ClientApp registers only "train" and "evaluate" handlers, and Flower runs
# mods only around registered handlers: the set-up request is a "train" message
# carrying this record, answered by the mod (like Flower's secaggplus_mod stages).
SETUP = "he-setup"
PARAMS = {
    "paillier": ("key_bits", "bits", "clip"),
    "ckks": ("poly_modulus_degree", "scale_bits"),
    "stream": ("bits", "clip"),
}
HOLDS = {"paillier": "public key only", "ckks": "public context only", "stream": "no key (it adds words mod 2**32)"}
KEYRING_FILE = "keyring_file"  # the sites' shared keyring (privmed.privacy.he.write_keyring): needed on a deployment


def decrypt_global(keyring: Keyring, rec: ConfigRecord) -> ArrayRecord:
    """The global model from the coordinator's encrypted sum."""
    layout = str(rec["layout"])
    vec = keyring.decrypt(bytes(rec["ciphertext"]), n_values=n_values(layout), count=int(rec["count"]))
    return unflatten(vec / float(rec["weight-sum"]), layout)


def he_mod(keyring: Keyring, *, n_examples: int, site: str):
    def mod(msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type == "evaluate" and EVAL in msg.content.config_records:
            msg.content = unsealed(msg.content, lambda rec: decrypt_global(keyring, rec))  # the harness's request
            return call_next(msg, context)
        if msg.metadata.message_type != "train":
            return call_next(msg, context)
        if SETUP in msg.content.config_records:
            public = ConfigRecord(
                {
                    "scheme": keyring.scheme,
                    "public": keyring.public(),
                    "key-id": keyring.key_id,
                    "num-examples": int(n_examples),
                }
            )
            return Message(RecordDict({"he-public": public}), reply_to=msg)
        t0 = time.perf_counter()
        content = msg.content
        arrays = decrypt_global(keyring, content["he"]) if "he" in content.config_records else content["arrays"]
        t_dec = time.perf_counter() - t0
        update, reply = train_checked(
            msg, context, call_next, arrays, content["config"], site=site, refused="not encrypted"
        )
        if reply.has_error():
            return reply
        t0 = time.perf_counter()
        ct = keyring.encrypt(flatten(update) * (n_examples / int(content["config"]["he-total-examples"])))
        # only the site's timings go with the ciphertext: its training loss would be a plaintext side channel
        metrics = {"he-decrypt-s": t_dec, "he-encrypt-s": time.perf_counter() - t0}
        out = RecordDict(
            {"he": ConfigRecord({"ciphertext": ct, "key-id": keyring.key_id}), "metrics": MetricRecord(metrics)}
        )
        return Message(out, reply_to=msg)

    return mod


class HEMechanism(Mechanism):
    protocols = ("he-fedavg",)
    purpose = "encrypts FedAvg updates"
    encrypts = True

    def __init__(self, scheme: str, options: dict[str, Any]) -> None:
        options = dict(options)
        self.keyring_file = options.pop(KEYRING_FILE, None)
        unknown = sorted(set(options) - set(PARAMS[scheme]))
        if unknown:
            valid = ", ".join((*PARAMS[scheme], KEYRING_FILE))
            raise PrivmedError(f"unknown he-{scheme} parameter {unknown[0]!r}; valid: {valid}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in options.values()):
            raise PrivmedError(f"he-{scheme} parameters must be numbers, got {options}")
        self.name, self.scheme, self.options = f"he-{scheme}", scheme, options
        self.keyring: Keyring | None = None
        self._sites: list[tuple[str, int]] = []
        self._coordinator = False

    def at_coordinator(self) -> None:
        self._coordinator = True

    def at_site(self) -> None:
        if not self.keyring_file:
            raise PrivmedError(
                f"{self.name} on a deployment needs the sites' shared keyring: make one with "
                f"privmed.privacy.he.write_keyring, give it to every site and pass --privacy-opt "
                f"{KEYRING_FILE}=PATH (each SuperNode is its own process: keys made there would differ)"
            )

    def check(self, plan: Plan) -> None:
        self._sites = [(name, len(train)) for name, train in plan.sites]
        if self._coordinator:  # the coordinator asks a site for the public key at set-up; it holds no keyring
            return
        if self.keyring_file:
            self.keyring = load_keyring(self.keyring_file, self.scheme)
        else:
            self.keyring = make_keyring(self.scheme, n_sites=len(plan.sites), **self.options)

    def client_mods(self, site_index: int) -> list:
        if self.keyring is None:
            raise PrivmedError(f"{self.name} has no keys yet: call check(plan) before building the sites")
        name, n = self._sites[site_index]
        return [he_mod(self.keyring, n_examples=n, site=name)]

    def reveal(self, predictor):
        """The global model as a site decrypts it (in-process, for the harness); a deployed coordinator cannot."""
        rec = sealed_record(predictor)
        return predictor if rec is None or self.keyring is None else decrypt_global(self.keyring, rec)

    def report(self) -> dict[str, Any]:
        return {
            "epsilon": None,
            "delta": None,
            "unit": None,
            "encryption": self.name,
            "coordinator_holds": HOLDS[self.scheme],
            "security_bits": None if self.keyring is None else self.keyring.security_bits,
            **self.options,
        }


# ----------------------------------------------------------------------------- the coordinator half


def setup(ctx: ProtocolContext, nodes: list[int]) -> tuple[str, bytes, dict[int, int]]:
    """Ask the sites for the public key material and their example counts; every site must answer."""
    msgs = [Message(RecordDict({SETUP: ConfigRecord()}), n, "train", group_id="0") for n in nodes]
    counts, public = {}, None
    for node, r in by_destination(msgs, ctx.grid.send_and_receive(msgs)).items():
        if r.has_error() or "he-public" not in r.content.config_records:
            reason = r.error.reason if r.has_error() else "no public key"
            raise PrivmedError(
                f"site node {node} has no HE keys ({reason}); "
                "run he-fedavg with --privacy he-stream, he-paillier or he-ckks"
            )
        rec = r.content["he-public"]
        public = public or (str(rec["scheme"]), bytes(rec["public"]))
        n, top = rec.get("num-examples"), ctx.declared.get(node, float("inf"))
        if not isinstance(n, int) or not 1 <= n <= top:
            raise PrivmedError(f"HE set-up: site node {node} reports {n!r} training examples, not a count in 1..{top}")
        counts[node] = n
    missing = sorted(set(nodes) - set(counts))
    if missing:
        raise PrivmedError(
            f"HE set-up: no reply from site node(s) {', '.join(map(str, missing))}; every site must report its "
            "example count before training (the FedAvg weights need them): check that the sites are up, then rerun"
        )
    return public[0], public[1], counts


def ciphertext_problem(reply: Message, aggregator, n: int) -> str | None:
    # the example counts were declared, and checked, at set-up; a reply carries the ciphertext and timings only
    problem = reply_problem(reply, None, records=("he", "metrics"), metrics=("he-encrypt-s", "he-decrypt-s"))
    if problem:
        return problem
    if "he" not in reply.content.config_records:
        return "reply carries no ciphertext"
    rec = reply.content["he"]
    if not isinstance(rec.get("ciphertext"), bytes):
        return "the ciphertext is not bytes"
    if str(rec.get("key-id", "")) != aggregator.key_id:
        return f"ciphertext under another key (key id {rec.get('key-id')!r}, expected {aggregator.key_id!r})"
    return aggregator.check(bytes(rec["ciphertext"]), n_values=n)


def run(ctx: ProtocolContext) -> ProtocolOutput:
    nodes = node_ids(ctx)
    scheme, public, counts = setup(ctx, nodes)  # a resumed run sets up new keys: the old ones died with the process
    aggregator = make_aggregator(scheme, public)
    total = sum(counts.values())
    content: dict = {"arrays": ctx.initial}  # public initial weights, or a resumed run's checkpointed model
    predictor = ctx.initial
    sealed = sealed_record(ctx.initial)
    if sealed is None:
        layout = layout_of(ctx.initial)
    else:  # a deployed coordinator resumed: it checkpointed the encrypted sum (no key), which the sites decrypt
        layout, content = str(sealed["layout"]), {"he": sealed}
    n = n_values(layout)
    t_add, t_enc, t_dec, ct_bytes = 0.0, 0.0, 0.0, []
    decrypting_rounds = (
        0  # rounds whose sites decrypted a sum: not the first (public weights); the last sum is the harness's
    )
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        cfg = ctx.round_config(rnd)
        cfg["he-total-examples"] = total
        msgs = [Message(RecordDict({**content, "config": cfg}), node, "train", group_id=str(rnd)) for node in nodes]
        replies = by_destination(msgs, ctx.grid.send_and_receive(msgs))
        kept, cts = [], []
        for node in nodes:
            problem = "no reply" if node not in replies else ciphertext_problem(replies[node], aggregator, n)
            if problem:
                ctx.reject(rnd, node, problem)
                continue
            kept.append(node)
            cts.append(bytes(replies[node].content["he"]["ciphertext"]))
            ct_bytes.append(len(cts[-1]))
            m = replies[node].content["metrics"]
            t_enc, t_dec = t_enc + float(m["he-encrypt-s"]), t_dec + float(m["he-decrypt-s"])
        if kept:
            decrypting_rounds += int("he" in content)
            t0 = time.perf_counter()
            summed = aggregator.add(cts)
            t_add += time.perf_counter() - t0
            rec = ConfigRecord(
                {
                    "ciphertext": summed,
                    "count": len(kept),
                    "weight-sum": sum(counts[k] for k in kept) / total,
                    "layout": layout,
                    "key-id": aggregator.key_id,
                }
            )
            content, predictor = {"he": rec}, seal_predictor(rec)
        ctx.evaluate_fn(rnd, predictor)
    rounds, n_sites = ctx.settings.rounds - ctx.start_round + 1, len(nodes)  # rounds run by this process
    mean_ct = sum(ct_bytes) / max(len(ct_bytes), 1)
    return ProtocolOutput(
        predictor,
        measured={
            "privacy": {"security_bits": aggregator.security_bits},  # also where the coordinator holds no keyring
            "communication": {
                "he_scheme": scheme,
                "ciphertext_bytes_per_site_per_round": mean_ct,
                "plaintext_float32_bytes": 4 * n,
                "expansion_factor": mean_ct / (4 * n),
            },
            "runtime": {
                "encrypt_seconds_per_round": t_enc / rounds,
                "aggregate_seconds_per_round": t_add / rounds,
                "decrypt_seconds_per_round": t_dec / max(decrypting_rounds, 1),
                "note": f"encrypt/decrypt summed over {n_sites} sites (sequential in-process); "
                "aggregate at the coordinator; "
                f"decrypt per round in which the sites decrypted a sum ({decrypting_rounds}: the first round starts "
                "from the "
                "public weights and the last sum is decrypted by the harness, untimed)",
            },
        },
    )


SPEC = ProtocolSpec(
    name="he-fedavg",
    technique="aono2017-he",
    run=run,
    views={
        "coordinator": View(
            CIPHERTEXT,
            "ciphertexts of each site's weighted update and of their sum; never a plaintext update; "
            "each site's training-set size (at set-up, for the FedAvg weights) and its encryption timings",
        ),
        "another site": View(AGGREGATE, "the decrypted global model after every round (the weighted sum of updates)"),
        "eavesdropper": View(CIPHERTEXT, "ciphertexts and the public key material"),
    },
    active_coordinator="confidentiality of every update (it holds no secret key); not integrity: it can drop, "
    "replay or substitute ciphertexts of the same key, e.g. return one site's ciphertext as the sum",
    schedule="parallel",
)
