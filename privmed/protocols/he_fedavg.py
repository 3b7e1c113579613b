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
weights. A reply that is an error, carries no
ciphertext, names another key, or whose ciphertext is truncated or
malformed is rejected (recorded; the round goes on without that site); the
sum then covers the remaining sites and says so (``count``, ``weight-sum``).
The site side (keys, decryption, encryption) is
:mod:`privmed.privacy.he_mechanism`.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Message, RecordDict

from privmed.errors import PrivmedError
from privmed.privacy.he import make_aggregator
from privmed.privacy.he_mechanism import SETUP
from privmed.privacy.sealed import layout_of, n_values, seal_predictor
from privmed.protocols.base import ProtocolContext, node_ids
from privmed.protocols.measured import MeasuredOutput


def setup(ctx: ProtocolContext, nodes: list[int]) -> tuple[str, bytes, dict[int, int]]:
    """Ask the sites for the public key material and their example counts; every site must answer."""
    replies = list(ctx.grid.send_and_receive([Message(RecordDict({SETUP: ConfigRecord()}), n, "train", group_id="0") for n in nodes]))
    counts, public = {}, None
    for r in replies:
        if r.has_error() or "he-public" not in r.content.config_records:
            reason = r.error.reason if r.has_error() else "no public key"
            raise PrivmedError(f"site node {r.metadata.src_node_id} has no HE keys ({reason}); "
                               "run he-fedavg with --privacy he-paillier or --privacy he-ckks")
        rec = r.content["he-public"]
        public = public or (str(rec["scheme"]), bytes(rec["public"]))
        counts[r.metadata.src_node_id] = int(rec["num-examples"])
    missing = sorted(set(nodes) - set(counts))
    if missing:
        raise PrivmedError(f"HE set-up: no reply from site node(s) {', '.join(map(str, missing))}; every site must report its "
                           "example count before training (the FedAvg weights need them): check that the sites are up, then rerun")
    return public[0], public[1], counts


def ciphertext_problem(reply: Message, aggregator, n: int) -> str | None:
    if reply.has_error():
        return f"site error: {reply.error.reason}"
    if "he" not in reply.content.config_records:
        return "reply carries no ciphertext"
    rec = reply.content["he"]
    if str(rec.get("key-id", "")) != aggregator.key_id:
        return f"ciphertext under another key (key id {rec.get('key-id')!r}, expected {aggregator.key_id!r})"
    return aggregator.check(bytes(rec["ciphertext"]), n_values=n)


def run(ctx: ProtocolContext) -> MeasuredOutput:
    nodes = node_ids(ctx)
    scheme, public, counts = setup(ctx, nodes)  # a resumed run sets up new keys: the old ones died with the process
    aggregator = make_aggregator(scheme, public)
    layout = layout_of(ctx.initial)
    n = n_values(layout)
    total = sum(counts.values())
    content: dict = {"arrays": ctx.initial}  # public initial weights, or a resumed run's checkpointed model
    predictor = ctx.initial
    t_add, t_enc, t_dec, ct_bytes = 0.0, 0.0, 0.0, []
    decrypting_rounds = 0  # rounds whose sites decrypted a sum: not the first (public weights); the last sum is the harness's
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        cfg = ctx.round_config(rnd)
        cfg["he-total-examples"] = total
        msgs = [Message(RecordDict({**content, "config": cfg}), node, "train", group_id=str(rnd)) for node in nodes]
        replies = {r.metadata.src_node_id: r for r in ctx.grid.send_and_receive(msgs)}
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
            rec = ConfigRecord({"ciphertext": summed, "count": len(kept), "weight-sum": sum(counts[k] for k in kept) / total,
                                "layout": layout, "key-id": aggregator.key_id})
            content, predictor = {"he": rec}, seal_predictor(rec)
        ctx.evaluate_fn(rnd, predictor)
    rounds, n_sites = ctx.settings.rounds - ctx.start_round + 1, len(nodes)  # rounds run by this process
    mean_ct = sum(ct_bytes) / max(len(ct_bytes), 1)
    return MeasuredOutput(predictor, measured={
        "communication": {"he_scheme": scheme, "ciphertext_bytes_per_site_per_round": mean_ct,
                          "plaintext_float32_bytes": 4 * n, "expansion_factor": mean_ct / (4 * n)},
        "runtime": {"encrypt_seconds_per_round": t_enc / rounds, "aggregate_seconds_per_round": t_add / rounds,
                    "decrypt_seconds_per_round": t_dec / max(decrypting_rounds, 1),
                    "note": f"encrypt/decrypt summed over {n_sites} sites (sequential in-process); aggregate at the coordinator; "
                            f"decrypt per round in which the sites decrypted a sum ({decrypting_rounds}: the first round starts from the "
                            "public weights and the last sum is decrypted by the harness, untimed)"},
    })
