"""Server-based network transmission (SNT) of encrypted weights.

Paper: Phuong & Phong 2019, "Privacy-preserving deep learning via weight
transmission" (IEEE TIFS). Mechanism, as in the paper: the participants
share a symmetric key; the server stores the current encrypted weights;
participants take turns to download them, decrypt, train on their own data,
encrypt and upload. Faithful: the coordinator only stores and forwards
opaque AES-256-GCM blobs (it holds no key and never sees weights after the
public initial model); sites visit in a fixed order, one cycle per round.
Differs: the paper uses TLS links besides the shared key; here the in-process
Grid carries the blobs (a Flower deployment adds TLS). After each round the
next site in the cycle is sent the round's last blob once more, only to open
it (an ``evaluate`` message answered by its mod, no training): one extra
download per round, so that a round is never evaluated on a blob no site has
opened. The site side is :mod:`privmed.protocols.weight_transmission.site`
(``--privacy aes-gcm``). On a Flower deployment every site loads the shared
key from its file (``--privacy-opt key_file=PATH``; the coordinator holds no
key and keeps the model sealed) and blobs are bound to Flower's run id; the
sites open the coordinator's blob to measure the model (harness evaluation).
A deployed SNT run cannot resume after its coordinator is killed (refused
with the reason): its checkpoint is the last blob, bound to the killed run's
Flower run id, which the sites of the resubmitted run (a new id) refuse.

A blob that fails authentication (tampered, or sealed under another key) or
that the receiving site refuses (another run's, a round older than one it
has accepted, one it has trained from before: a replay or reordering by an
active relay; see :func:`privmed.privacy.aes_keys.check_header`) is an error
reply naming both sites. The coordinator then forwards instead the
last blob a site opened successfully (the public initial weights if none),
and the run goes on without the lost work: the visit of the site that could
not open it is rejected, and so is the update of the site that uploaded it,
unless a site had already opened that blob. A tampered last upload of a round
is caught by the check above, before the round is evaluated. Other site
errors (NaN update) skip the visit and keep the current blob, as CWT does.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from privmed.engine.validate import reply_problem
from privmed.errors import PrivmedError
from privmed.privacy.sealed import layout_of, n_values, seal_predictor, sealed_record
from privmed.protocols.base import ProtocolContext, ProtocolOutput, ProtocolSpec, node_ids
from privmed.protocols.weight_transmission.site import VERIFY
from privmed.threat import CIPHERTEXT, UPDATE, View

# a blob the receiving site could not or would not open: tampered, foreign, replayed, reordered
REFUSED = ("failed authentication", "blob refused")


def refused(problem: str) -> bool:
    return any(marker in problem for marker in REFUSED)


def visit(ctx: ProtocolContext, node: int, content: dict, rnd: int) -> tuple[bytes | None, str | None]:
    """One site's turn: the blob it uploads, or why the visit failed."""
    msg = Message(RecordDict({**content, "config": ctx.round_config(rnd)}), node, "train", group_id=str(rnd))
    replies = list(ctx.grid.send_and_receive([msg]))
    if not replies:
        return None, "no reply"
    reply = replies[0]
    if not reply.has_error() and "sealed" not in reply.content.config_records:
        return None, "reply carries no sealed weights (is --privacy aes-gcm set?)"
    problem = reply_problem(reply, None, records=("sealed",))  # the blob only: no metrics leave the site in the clear
    if problem:
        return None, problem
    blob = reply.content["sealed"].get("blob")
    if not isinstance(blob, bytes):
        return None, "the sealed weights are not bytes"
    return blob, None


def verify(ctx: ProtocolContext, nodes: list[int], content: dict, rnd: int) -> str | None:
    """Have the next sites in the cycle open ``content``: None if one did, the reason if it failed authentication."""
    problems = []
    for node in nodes:
        msg = Message(
            RecordDict({**content, VERIFY: ConfigRecord({"round": rnd})}), node, "evaluate", group_id=str(rnd)
        )
        replies = list(ctx.grid.send_and_receive([msg]))
        if replies and not replies[0].has_error() and VERIFY in replies[0].content.config_records:
            return None
        problem = (
            "no reply"
            if not replies
            else (
                f"site error: {replies[0].error.reason}"
                if replies[0].has_error()
                else "site did not check the blob (is --privacy aes-gcm set?)"
            )
        )
        if refused(problem):
            return problem
        problems.append(f"node {node}: {problem}")
    raise PrivmedError(f"SNT round {rnd}: no site could open the round's model to check it ({'; '.join(problems)})")


def predictor_of(content: dict):
    return seal_predictor(content["sealed"]) if "sealed" in content else content["arrays"]


def run(ctx: ProtocolContext) -> ProtocolOutput:
    nodes = node_ids(ctx)
    if sealed_record(ctx.initial) is not None:
        raise PrivmedError(
            "SNT cannot resume on a deployment: the coordinator, which holds no key, checkpointed the last sealed "
            "blob, which is bound to the killed run's Flower run id, and the sites refuse a blob of another run "
            "(a replay); start the run again"
        )
    # the last content a site opened successfully: what a rollback forwards; at first the public initial weights
    # (a resumed run: its checkpointed, decrypted model, in the clear like round 1)
    good: dict = {"arrays": ctx.initial}
    content, uploader, sizes = good, None, []
    for rnd in range(ctx.start_round, ctx.settings.rounds + 1):
        for node in nodes:
            blob, problem = visit(ctx, node, content, rnd)
            if problem:
                ctx.reject(rnd, node, problem)
                if refused(problem):
                    if content is not good:  # nobody opened this upload: its update is lost too
                        ctx.reject(
                            rnd, uploader, f"its sealed weights could not be opened by the next site ({problem})"
                        )
                    content = good
                continue
            sizes.append(len(blob))
            good, content, uploader = content, {"sealed": ConfigRecord({"blob": blob})}, node
        if content is not good:  # the round's last upload: no site has opened it yet
            problem = verify(ctx, nodes, content, rnd)
            if problem:
                ctx.reject(rnd, uploader, f"its sealed weights could not be opened by the next site ({problem})")
                content = good
            else:
                good = content
        ctx.evaluate_fn(rnd, predictor_of(content))
    plain = 4 * n_values(layout_of(ctx.initial))
    mean = sum(sizes) / max(len(sizes), 1)
    return ProtocolOutput(
        predictor_of(content),
        measured={
            "communication": {
                "sealed_blob_bytes": mean,
                "plaintext_float32_bytes": plain,
                "expansion_factor": mean / plain,
            }
        },
    )


SPEC = ProtocolSpec(
    name="snt",
    technique="phuong2019-snt",
    run=run,
    views={
        "coordinator": View(CIPHERTEXT, "opaque AES-GCM blobs of the weights after every site visit"),
        "another site": View(UPDATE, "the model the previous site in the cycle trained (it holds the shared key)"),
        "eavesdropper": View(CIPHERTEXT, "opaque AES-GCM blobs"),
    },
    active_coordinator="confidentiality and integrity of the weights (authenticated, bound to run, round and "
    "sender: replays and reorderings are refused); it can still withhold a blob or skip a site",
    schedule="sequential",
)
