"""Encrypted weight transmission (Phuong 2019): the sites' side, for the ``snt`` and ``fnt`` protocols.

Paper: Phuong & Phong 2019, "Privacy-preserving deep learning via weight
transmission" (IEEE TIFS). Privacy name ``aes-gcm`` (option ``key_file``: the
SNT key shared by the sites, 64 hex digits, mode 600; without it a fresh key
is generated in memory). The client mod:
- SNT, ``train`` message: a ``sealed`` record holds the blob the coordinator
  forwards; the site opens it with the shared key (or takes the public
  initial weights on the first visit), trains, refuses a NaN/wrong-shaped
  update, seals the new weights and replies with the blob only. An
  ``evaluate`` message with a ``snt-verify`` record asks the site only to open
  the blob it carries (the coordinator's check of a round's last upload): it
  replies with a ``snt-verify`` record naming itself, or fails authentication
  with an error naming both sites;
- FNT, ``train`` message: a ``fnt`` record names the peer to receive from and
  to send to; the site takes the blob from its in-process peer link, opens it
  with the pairwise key of that peer, trains, seals under the pairwise key of
  the next peer and deposits it on that link; its reply to the scheduler
  holds no weights. If the next peer fails, the scheduler asks the site to
  ``resend`` its model to the peer after it. ``PeerLinks`` counts the bytes
  on every link.
Faithful: the sites decrypt, train and re-encrypt; one symmetric key shared
by all sites (SNT) or one key per pair of sites (FNT); no key leaves the
sites. Differs: in-process all key material lives in this one object, which
stands for all the sites (the coordinator, the protocol, never receives it);
a deployment would keep each site's keys at that site. The FNT "links" are
in-process mailboxes, not network connections. The concrete primitives
(AES-256-GCM, X25519 + HKDF) are this project's choice, see
:mod:`privmed.privacy.aes_keys`.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from privmed.engine.validate import train_checked
from privmed.errors import PrivmedError
from privmed.evaluation import EVAL
from privmed.privacy.aes_keys import ANY_SITE, Header, PairwiseKeys, check_header, load_key, open_sealed, seal
from privmed.privacy.base import Mechanism, Plan
from privmed.privacy.sealed import from_bytes, sealed_record, to_bytes, unsealed
from privmed.protocols.base import TrainInstruction

VERIFY = "snt-verify"  # an SNT "evaluate" message carrying this record: open the blob, do not train


class PeerLinks:
    """The sites' direct links (FNT): one mailbox per (sender, receiver), bytes counted."""

    def __init__(self) -> None:
        self._boxes: dict[tuple[str, str], bytes] = {}
        self.bytes: dict[str, int] = {}
        self.latest: dict[str, ArrayRecord] = {}  # each site's own current model (stays at the site)

    def send(self, sender: str, receiver: str, blob: bytes) -> None:
        self._boxes[(sender, receiver)] = blob
        link = "->".join((sender, receiver))
        self.bytes[link] = self.bytes.get(link, 0) + len(blob)

    def receive(self, sender: str, receiver: str) -> bytes:
        if (sender, receiver) not in self._boxes:
            raise PrivmedError(f"{receiver}: nothing received from {sender!r} on the peer link")
        return self._boxes.pop((sender, receiver))


def weight_mod(site: str, *, shared: bytes, pairwise: PairwiseKeys, links: PeerLinks, run: str | None):
    """The site's half: open what it receives (refusing replays, reorderings and re-addressed blobs), train, seal.

    Nothing derived from the site's data leaves it in the clear: SNT replies
    carry only the blob, FNT replies only the bytes sent on the peer link.
    """
    # the newest round this site has accepted a blob from; the run id blobs are bound to (deployed, run None:
    # Flower's run id, the same at every SuperNode of the run)
    last: dict = {"round": 0, "run": run}
    trained_from: set[bytes] = set()  # digests of the blobs this site has trained from: never twice

    def opened(blob: bytes, key: bytes, rnd: int, *, to_train: bool = True) -> ArrayRecord:
        plaintext, header = open_sealed(blob, key=key, receiver=site)  # raises on a tampered or foreign blob
        check_header(header, receiver=site, run=last["run"], round=rnd, last_round=last["round"])
        digest = hashlib.sha256(blob).digest()
        if to_train and digest in trained_from:
            raise PrivmedError(
                f"{site}: weights from {header.sender!r} were trained from before: replayed blob refused"
            )
        last["round"] = header.round
        if to_train:
            trained_from.add(digest)
        return from_bytes(plaintext)

    def to_evaluate(rec: ConfigRecord) -> ArrayRecord:
        """A model the harness asks this site to measure: of this run and for any site; any earlier round (the
        released model is the best round's), and it moves no round forward (nothing is trained from it)."""
        plaintext, header = open_sealed(bytes(rec["blob"]), key=shared, receiver=site)
        check_header(header, receiver=site, run=last["run"], round=header.round, last_round=0)
        return from_bytes(plaintext)

    def sealed(arrays: ArrayRecord, key: bytes, rnd: int, to: str) -> bytes:
        return seal(to_bytes(arrays), key=key, header=Header(run=last["run"], round=rnd, sender=site, recipient=to))

    def fnt_reply(msg: Message, sent: int) -> Message:
        return Message(RecordDict({"fnt": ConfigRecord({"site": site, "sent-bytes": sent})}), reply_to=msg)

    def mod(msg: Message, context: Context, call_next) -> Message:
        content = msg.content
        if run is None:
            last["run"] = f"flower-run-{context.run_id}"
        if msg.metadata.message_type == "evaluate" and EVAL in content.config_records:  # the harness's evaluation
            msg.content = unsealed(content, to_evaluate)
            return call_next(msg, context)
        if msg.metadata.message_type == "evaluate" and VERIFY in content.config_records:
            opened(bytes(content["sealed"]["blob"]), shared, int(content[VERIFY]["round"]), to_train=False)  # raises
            return Message(RecordDict({VERIFY: ConfigRecord({"site": site})}), reply_to=msg)
        if msg.metadata.message_type != "train":
            return call_next(msg, context)
        rnd = TrainInstruction.from_record(content["config"]).server_round
        if "fnt" in content.config_records:
            route = content["fnt"]
            if route.get("setup"):
                return Message(RecordDict({"fnt": ConfigRecord({"site": site})}), reply_to=msg)
            if route.get("resend"):  # the next peer failed: pass own model on to the one after it
                to = str(route["to"])
                blob = sealed(links.latest[site], pairwise.key(site, to), rnd, to)
                links.send(site, to, blob)
                return fnt_reply(msg, len(blob))
            src, dst = str(route["from"]), str(route["to"])
            arrays = opened(links.receive(src, site), pairwise.key(site, src), rnd) if src else content["arrays"]
            update, reply = train_checked(
                msg, context, call_next, arrays, content["config"], site=site, refused="not sent"
            )
            if reply.has_error():
                return reply
            links.latest[site] = update
            blob = sealed(update, pairwise.key(site, dst), rnd, dst) if dst else b""
            if dst:
                links.send(site, dst, blob)
            return fnt_reply(msg, len(blob))
        arrays = (
            opened(bytes(content["sealed"]["blob"]), shared, rnd)
            if "sealed" in content.config_records
            else content["arrays"]
        )
        update, reply = train_checked(msg, context, call_next, arrays, content["config"], site=site, refused="not sent")
        if reply.has_error():
            return reply
        return Message(
            RecordDict({"sealed": ConfigRecord({"blob": sealed(update, shared, rnd, ANY_SITE)})}), reply_to=msg
        )

    return mod


class WeightEncryption(Mechanism):
    protocols = ("snt", "fnt")
    purpose = "seals transmitted weights"
    encrypts = True

    name = "aes-gcm"

    def __init__(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - {"key_file"})
        if unknown:
            raise PrivmedError(f"unknown aes-gcm parameter {unknown[0]!r}; valid: key_file")
        self.key_file = options.get("key_file")
        self.links = PeerLinks()
        self._shared: bytes | None = None
        self._pairwise: PairwiseKeys | None = None
        self._names: list[str] = []
        self._run: str | None = None
        self._role = "in-process"

    def at_coordinator(self) -> None:
        self._role = "coordinator"

    def at_site(self) -> None:
        if not self.key_file:
            raise PrivmedError(
                "aes-gcm on a deployment needs the key the sites share: write one with "
                "privmed.privacy.aes_keys.write_key, give it to every site and pass --privacy-opt key_file=PATH"
            )
        self._role = "site"

    def check(self, plan: Plan) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._names = [name for name, _ in plan.sites]
        if self._role == "coordinator":  # it forwards blobs; it holds no key
            return
        self._shared = load_key(self.key_file) if self.key_file else AESGCM.generate_key(bit_length=256)
        self._pairwise = PairwiseKeys(self._names)
        # the sites' id for this run, bound into every blob they seal; deployed, Flower's run id (see weight_mod)
        self._run = None if self._role == "site" else secrets.token_hex(8)

    def client_mods(self, site_index: int) -> list:
        if not self._names:
            raise PrivmedError("aes-gcm has no keys yet: call check(plan) before building the sites")
        name = self._names[site_index]
        return [weight_mod(name, shared=self._shared, pairwise=self._pairwise, links=self.links, run=self._run)]

    def reveal(self, predictor):
        """SNT: open the coordinator's last blob; FNT: the model held by the last site."""
        rec = sealed_record(predictor)
        if rec is None or self._role == "coordinator":
            return predictor
        if "holder" in rec:
            return self.links.latest[str(rec["holder"])]
        return from_bytes(open_sealed(bytes(rec["blob"]), key=self._shared, receiver="harness")[0])

    def state_dict(self) -> dict[str, Any]:
        """The bytes counted on each peer link, so a resumed FNT run reports the whole run's; keys are never saved."""
        return {"peer_link_bytes": dict(self.links.bytes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.links.bytes.update(state.get("peer_link_bytes", {}))

    def report(self) -> dict[str, Any]:
        return {
            "epsilon": None,
            "delta": None,
            "unit": None,
            "encryption": "AES-256-GCM",
            "key": "key file" if self.key_file else "generated in memory",
            "peer_link_bytes": dict(self.links.bytes),
        }
