"""Fully-connected network transmission (FNT) of encrypted weights: no coordinator.

Paper: Phuong & Phong 2019, "Privacy-preserving deep learning via weight
transmission" (IEEE TIFS). Mechanism: no server; the participants pass the
weights to each other directly, each link protected by its own key
(L(L-1)/2 links). Faithful: weights travel only over site-to-site links,
sealed with AES-256-GCM under a pairwise key (X25519 + HKDF) that only the
two ends derive; the visiting order is a fixed cycle, one cycle per round.

What Flower can and cannot express: Flower has no client-to-client channel;
every Message goes between the ServerApp and one SuperNode. Here the Grid
carries only the *schedule* (which site trains, whom it receives from and
sends to) and tiny replies (metrics, bytes sent), while the weights move on
in-process peer links (:class:`privmed.protocols.weight_transmission.site.PeerLinks`,
bytes counted per link, reported in the result's privacy section as
``peer_link_bytes``). A Flower deployment could run the same schedule from a
ServerApp, but the site-to-site transfer would have to leave Flower (e.g. a
direct TLS connection between hospitals, or blobs relayed through the
SuperLink, which would make it SNT). The initial weights, public, come with
the first site's schedule message.

A site that fails (error, bad update, failed authentication of what it
received) is skipped: its predecessor resends its own model to the next site.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from privmed.engine.validate import records_problem
from privmed.errors import PrivmedError
from privmed.privacy.sealed import seal_predictor
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.threat import CIPHERTEXT, NOTHING, UPDATE, View


def _ask(ctx: ProtocolContext, node: int, route: dict, rnd: int, arrays=None) -> tuple[Message | None, str | None]:
    content = {"fnt": ConfigRecord(route), "config": ctx.round_config(rnd)}
    if arrays is not None:
        content["arrays"] = arrays
    replies = list(ctx.grid.send_and_receive([Message(RecordDict(content), node, "train", group_id=str(rnd))]))
    if not replies:
        return None, "no reply"
    if replies[0].has_error():
        return None, f"site error: {replies[0].error.reason}"
    if "fnt" not in replies[0].content.config_records:
        return None, "site does not speak FNT (is --privacy aes-gcm set?)"
    if route.get("setup"):
        return replies[0], None
    problem = records_problem(replies[0], ("fnt",))  # a visit's reply holds only the bytes it sent on the peer link
    if problem is None and not isinstance(replies[0].content["fnt"].get("sent-bytes"), int):
        problem = "reply does not say how many bytes it sent"
    return (None, problem) if problem else (replies[0], None)


def run(ctx: ProtocolContext) -> ProtocolOutput:
    nodes = node_ids(ctx)
    names = {}
    for node in nodes:
        reply, problem = _ask(ctx, node, {"setup": True}, 0)
        if problem:
            raise PrivmedError(f"FNT set-up failed at node {node}: {problem}")
        names[node] = str(reply.content["fnt"]["site"])
    # holder: the node that has the current model; peer bytes carry over a resume (checkpointed in ctx.state)
    rounds, holder, peer_bytes = ctx.settings.rounds, None, int(ctx.state.get("peer_bytes", 0))
    # a resumed run hands the checkpointed model (as the sites saw it) to the first site, like round 1's initial weights
    for rnd in range(ctx.start_round, rounds + 1):
        for i, node in enumerate(nodes):
            final = rnd == rounds and i == len(nodes) - 1
            nxt = "" if final else names[nodes[(i + 1) % len(nodes)]]
            route = {"from": names[holder] if holder else "", "to": nxt}
            reply, problem = _ask(ctx, node, route, rnd, arrays=None if holder else ctx.initial)
            if not problem:
                holder, peer_bytes = node, peer_bytes + int(reply.content["fnt"]["sent-bytes"])
                continue
            ctx.reject(rnd, node, problem)
            if holder and nxt:
                reply, again = _ask(ctx, holder, {"resend": True, "to": nxt}, rnd)
                if again:
                    raise PrivmedError(f"FNT: {names[holder]} could not resend its model to {nxt}: {again}")
                peer_bytes += int(reply.content["fnt"]["sent-bytes"])
        if holder is None:
            raise PrivmedError(f"round {rnd}: every site failed; no site holds a model")
        ctx.state["peer_bytes"] = peer_bytes
        ctx.evaluate_fn(rnd, seal_predictor(ConfigRecord({"holder": names[holder]})))
    return ProtocolOutput(
        seal_predictor(ConfigRecord({"holder": names[holder]})),
        measured={
            "communication": {
                "peer_link_bytes": peer_bytes,
                "peer_bytes_per_site_per_round": peer_bytes / len(nodes) / rounds,
            }
        },
    )


SPEC = ProtocolSpec(
    name="fnt",
    technique="phuong2019-fnt",
    run=run,
    views={
        "coordinator": View(NOTHING, "nothing but the visiting schedule (weights go site to site)"),
        "another site": View(
            UPDATE, "the model the previous site in the cycle trained (opened with their pairwise key)"
        ),
        "eavesdropper": View(CIPHERTEXT, "AES-GCM blobs on the peer links"),
    },
    active_coordinator="confidentiality (it never holds weights); it can still reorder or skip sites in the schedule",
    schedule="sequential",
    deploy_refusal=(
        "FNT passes the weights site to site and Flower has no channel between SuperNodes (every message goes "
        "through the SuperLink); a relay through the coordinator would also need each pair of sites to agree a "
        "key it cannot intercept (in-process the pairwise X25519 keys are made in one process; deployed, the "
        "public keys would pass through the coordinator unauthenticated: it could stand in the middle), and "
        "privmed has no per-pair key provisioning yet. Deploy --protocol snt: the same weight transmission "
        "through the coordinator, under one key the sites share"
    ),
)
