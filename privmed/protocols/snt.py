"""Server-based network transmission (SNT) of encrypted weights.

Paper: Phuong & Phong 2019, "Privacy-preserving deep learning via weight
transmission" (IEEE TIFS). Mechanism, as in the paper: the participants
share a symmetric key; the server stores the current encrypted weights;
participants take turns to download them, decrypt, train on their own data,
encrypt and upload. Faithful: the coordinator only stores and forwards
opaque AES-256-GCM blobs (it holds no key and never sees weights after the
public initial model); sites visit in a fixed order, one cycle per round.
Differs: the paper uses TLS links besides the shared key; here the in-process
Grid carries the blobs (a Flower deployment adds TLS). The site side is
:mod:`privmed.privacy.weight_encryption` (``--privacy aes-gcm``).

A blob that fails authentication at the next site (tampered, or sealed under
another key) is an error reply naming both sites: the visit is rejected and
the coordinator forwards instead the last blob a site opened successfully,
so the run goes on without the lost update. Other site errors (NaN update)
skip the visit and keep the current blob, as CWT does.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from privmed.privacy.sealed import layout_of, n_values, seal_predictor
from privmed.protocols.base import ProtocolContext, node_ids
from privmed.protocols.measured import MeasuredOutput, refuse_resume

AUTH_FAILURE = "failed authentication"


def visit(ctx: ProtocolContext, node: int, content: dict, rnd: int) -> tuple[bytes | None, str | None]:
    """One site's turn: the blob it uploads, or why the visit failed."""
    msg = Message(RecordDict({**content, "config": ctx.round_config(rnd)}), node, "train", group_id=str(rnd))
    replies = list(ctx.grid.send_and_receive([msg]))
    if not replies:
        return None, "no reply"
    reply = replies[0]
    if reply.has_error():
        return None, f"site error: {reply.error.reason}"
    if "sealed" not in reply.content.config_records:
        return None, "reply carries no sealed weights (is --privacy aes-gcm set?)"
    return bytes(reply.content["sealed"]["blob"]), None


def run(ctx: ProtocolContext) -> MeasuredOutput:
    refuse_resume(ctx)
    content: dict = {"arrays": ctx.initial}
    opened, predictor, sizes = content, ctx.initial, []
    for rnd in range(1, ctx.settings.rounds + 1):
        for node in node_ids(ctx):
            blob, problem = visit(ctx, node, content, rnd)
            if problem:
                ctx.reject(rnd, node, problem)
                if AUTH_FAILURE in problem:
                    content = opened
                continue
            sizes.append(len(blob))
            opened = content
            content = {"sealed": ConfigRecord({"blob": blob})}
            predictor = seal_predictor(content["sealed"])
        ctx.evaluate_fn(rnd, predictor)
    plain = 4 * n_values(layout_of(ctx.initial))
    mean = sum(sizes) / max(len(sizes), 1)
    return MeasuredOutput(predictor, measured={"communication": {
        "sealed_blob_bytes": mean, "plaintext_float32_bytes": plain, "expansion_factor": mean / plain}})
