"""Flower's deployed Grid as the protocols see it: one stable node id per site, ordered by the sites' names.

A SuperLink gives every SuperNode a random node id, new at every start, so a
protocol that visits sites in node-id order (single, SWT, CWT, DSSGD, SNT)
would visit them in an order unrelated to the hospitals, and a site that
restarts would look like a new one. :class:`SiteGrid` wraps Flower's Grid:

- **names**: a node's name is the one it was registered under
  (``flwr supernode register KEY.pub --name NAME``: with SuperNode
  authentication the SuperLink vouches for it) or, without authentication,
  the name the site reports when asked (a ``query`` message answered by
  :mod:`privmed.engine.deploy`'s ClientApp). Two online nodes claiming one
  name are refused before the run starts.
- **which sites**: a run may name its sites (``privmed run --site NAME``):
  a SuperLink may serve more hospitals than one run uses; else every site
  online takes part.
- **set-up questions**: :meth:`SiteGrid.ask` sends every site of the run one
  ``query`` (its data's description, :mod:`privmed.engine.describe`).
- **order**: site *k* in name order is node ``FIRST_NODE_ID + k``, as the
  in-process engine numbers the k-th site, so every protocol runs the same
  schedule on both engines.
- **bounded waiting**: :meth:`get_node_ids` always lists every site of the
  run (Flower's FedAvg waits, without a timeout, until ``min_available_nodes``
  are online); a message to a site that is offline gets an error reply at
  once, and ``send_and_receive`` returns what arrived within
  ``reply_timeout_s`` (Flower's own default is 3600 s, polled every 3 s;
  here every ``poll_s``), so a killed SuperNode costs at most one timeout.
- **addressing**: each message carries the node id the coordinator used
  (``privmed-node`` record); the site's ClientApp restores it as the
  message's destination (:func:`as_addressed`), so SecAgg+'s mod, which names
  a site by the destination of its messages, agrees with the coordinator.
- **rejoin**: a site that restarts (new node id, same name) is mapped back to
  its node id at the next message sent to it.

``events`` records what the coordinator saw (site offline, site rejoined,
replies that timed out), with seconds since the run started, for
result.json's ``reliability``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from privmed.engine.grid import Traffic
from privmed.engine.session import FIRST_NODE_ID  # site k is node FIRST_NODE_ID + k on both engines
from privmed.errors import PrivmedError

LIVENESS_S = 2.0  # while waiting for replies, how often the SuperLink is asked which nodes are still online
IDENTIFY = "privmed-identify"  # the query a site answers with its name
# the node id the coordinator addressed, carried to the site (its SuperNode sees its Flower id): SecAgg+'s mod
# names the site by the message's destination, and must use the ids the coordinator's tables use
ADDRESSED = "privmed-node"


class SiteGrid(Grid):
    """Wrap a deployed Flower ``grid``; see the module docstring."""

    def __init__(self, grid: Grid, *, reply_timeout_s: float = 600.0, poll_s: float = 0.2) -> None:
        self.grid, self.reply_timeout_s, self.poll_s = grid, float(reply_timeout_s), float(poll_s)
        self.sites: list[str] = []  # site k is node FIRST_NODE_ID + k
        self.node_of: dict[str, int] = {}  # site -> its current Flower node id (while online)
        self._names: dict[int, str] = {}  # every Flower node id seen -> site name
        self._pending: dict[str, int] = {}  # Flower message id -> our node id
        self._sent_to: dict[str, int] = {}  # Flower message id -> the Flower node id it went to
        self._ready: list[Message] = []  # error replies for sites that were offline
        self.events: list[dict] = []
        self._t0 = time.monotonic()
        # Flower's grid reports no bytes or site seconds: empty, so a checkpoint keeps a deployed run like another
        self.traffic = Traffic()
        self.site_seconds: dict[int, float] = {}

    # -- who is there -------------------------------------------------------------
    def join(self, n_sites: int, wait_s: float, names: Sequence[str] = ()) -> list[str]:
        """Wait until ``n_sites`` distinct sites are online (``names``: those sites, of the others the SuperLink may
        serve); fix their order (by name) for the run."""
        if names and len(set(names)) != n_sites:
            raise PrivmedError(f"the run names {len(set(names))} sites ({', '.join(names)}) but has {n_sites}")
        deadline = time.monotonic() + wait_s
        while True:
            online = self._online(refuse_duplicates=True)
            if names:
                online = {name: nid for name, nid in online.items() if name in names}
            if len(online) >= n_sites:
                break
            if time.monotonic() > deadline:
                absent = f"; not online: {', '.join(sorted(set(names) - set(online)))}" if names else ""
                raise PrivmedError(
                    f"only {len(online)} of {n_sites} sites joined within {wait_s:.0f} s "
                    f"({', '.join(sorted(online)) or 'none'}{absent}); start one `privmed site` per hospital"
                )
            time.sleep(0.5)
        self.sites = sorted(online)
        self.node_of = dict(online)
        return self.sites

    def ask(self, record: ConfigRecord, *, timeout: float | None = None) -> dict[str, Message | str]:
        """Send every site of the run one ``query`` carrying ``record``: site name -> its reply, or why none came."""
        nodes = list(self.get_node_ids())
        msgs = [Message(RecordDict({"config": record}), node, "query", group_id="0") for node in nodes]
        replies = {int(r.metadata.src_node_id): r for r in self.send_and_receive(msgs, timeout=timeout)}
        out: dict[str, Message | str] = {}
        for node in nodes:
            reply = replies.get(node)
            if reply is None:
                out[self.site_of(node)] = "no reply"
            elif reply.has_error():
                out[self.site_of(node)] = f"site error: {reply.error.reason}"
            else:
                out[self.site_of(node)] = reply
        return out

    def _online(self, *, refuse_duplicates: bool = False) -> dict[str, int]:
        """Site name -> Flower node id of every online node (the newest node of a name that restarted)."""
        nodes = {int(n.node_id): str(getattr(n, "name", "") or "") for n in self.grid.get_nodes()}
        unknown = [nid for nid in nodes if nid not in self._names]
        asked = self._ask_names([nid for nid in unknown if not nodes[nid]])
        for nid in unknown:
            if nodes[nid] or nid in asked:
                self._names[nid] = nodes[nid] or asked[nid]
        out: dict[str, int] = {}
        for nid in sorted(nodes, key=lambda n: n not in unknown):  # new node ids last: a restarted site wins
            name = self._names.get(nid)
            if name is None:
                continue
            if refuse_duplicates and name in out:
                raise PrivmedError(
                    f"two SuperNodes (node ids {out[name]} and {nid}) claim site {name!r}; each hospital runs one"
                )
            out[name] = nid
        return out

    def _ask_names(self, node_ids: list[int]) -> dict[int, str]:
        if not node_ids:
            return {}
        msgs = [
            Message(RecordDict({"config": ConfigRecord({IDENTIFY: 1})}), nid, "query", group_id="0") for nid in node_ids
        ]
        replies = self._exchange(self.grid, msgs, timeout=min(self.reply_timeout_s, 60.0))
        return {
            int(r.metadata.src_node_id): str(r.content["config"]["site"])
            for r in replies
            if not r.has_error() and "config" in r.content.config_records
        }

    def refresh(self) -> None:
        """Follow sites going offline and coming back (a restarted site has a new node id)."""
        online = self._online()
        for name in self.sites:
            was, now = self.node_of.get(name), online.get(name)
            if was is not None and now is None:
                self._event("offline", name)
            elif now is not None and was != now:
                self._event("rejoined" if was is None else "new node", name)
            if now is None:
                self.node_of.pop(name, None)
            else:
                self.node_of[name] = now

    def _event(self, kind: str, site: str) -> None:
        now = time.monotonic() - self._t0
        self.events.append({"event": kind, "site": site, "seconds": round(now, 2), "at": time.time()})

    # -- Grid interface -----------------------------------------------------------
    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [FIRST_NODE_ID + k for k in range(len(self.sites))]

    def site_of(self, node: int) -> str:
        return self.sites[node - FIRST_NODE_ID]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.refresh()
        out, to_push, ours = [], [], []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if not FIRST_NODE_ID <= node < FIRST_NODE_ID + len(self.sites):
                raise ValueError(f"no site with node id {node}")
            real = self.node_of.get(self.site_of(node))
            if real is None:
                mid = f"offline-{len(self._ready)}-{node}"
                msg.metadata.__dict__["_message_id"] = mid
                reply = Message(
                    Error(code=ErrorCode.NODE_UNAVAILABLE, reason=f"site {self.site_of(node)} is offline"),
                    reply_to=msg,
                )
                reply.metadata.__dict__["_src_node_id"] = node
                self._ready.append(reply)
                out.append(mid)
                continue
            # a copy addressed to the site's Flower node id (a message's id is a hash of it)
            md = msg.metadata
            content = RecordDict({**msg.content, ADDRESSED: ConfigRecord({"node-id": node})})
            to_push.append(Message(content, real, md.message_type, ttl=md.ttl, group_id=md.group_id))
            ours.append((msg, node, real))
        for mid, (msg, node, real) in zip(self.grid.push_messages(to_push), ours):
            if mid is None:  # Flower could not push it (logged by Flower); no reply will come
                continue
            msg.metadata.__dict__["_message_id"] = mid
            self._pending[mid], self._sent_to[mid] = node, real
            out.append(mid)
        return out

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = list(message_ids)
        replies = [r for r in self._ready if r.metadata.reply_to_message_id in ids]
        self._ready = [r for r in self._ready if r not in replies]
        remote = [m for m in ids if m in self._pending]
        for reply in self.grid.pull_messages(remote) if remote else []:
            node = self._pending.pop(reply.metadata.reply_to_message_id, None)
            self._sent_to.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        limit = self.reply_timeout_s if timeout is None else min(timeout, self.reply_timeout_s)
        msgs = list(messages)
        ids = list(self.push_messages(msgs))
        replies = self._collect(ids, limit)
        # in the order the messages were sent, as the in-process grid returns them, not in order of arrival:
        # an average then adds its terms in the same order on both engines (bit-identical results)
        rank = {mid: i for i, mid in enumerate(ids)}
        replies.sort(key=lambda r: rank.get(r.metadata.reply_to_message_id, len(rank)))
        missing = set(ids) - {r.metadata.reply_to_message_id for r in replies}
        for mid in missing:
            node = self._pending.pop(mid, None)
            self._sent_to.pop(mid, None)
            if node is not None:
                self._event("no reply", self.site_of(node))
        return replies

    def _collect(self, ids: list[str], limit: float) -> list[Message]:
        """Replies to ``ids`` until all came, ``limit`` s passed, or every site still awaited went offline."""
        deadline, waiting, out = time.monotonic() + limit, set(ids), []
        next_check = time.monotonic() + LIVENESS_S
        while waiting:
            got = list(self.pull_messages(list(waiting)))
            out += got
            waiting -= {r.metadata.reply_to_message_id for r in got}
            if not waiting or time.monotonic() > deadline:
                break
            if time.monotonic() > next_check:  # a SuperNode that died will not answer: stop waiting for it
                online = set(self._online().values())
                gone = {m for m in waiting if m in self._sent_to and self._sent_to[m] not in online}
                for mid in gone:
                    self._event("offline while awaited", self.site_of(self._pending[mid]))
                waiting -= gone
                next_check = time.monotonic() + LIVENESS_S
            time.sleep(self.poll_s)
        return out

    def _exchange(self, grid: Grid, msgs: list[Message], *, timeout: float) -> list[Message]:
        """Flower's push/pull on the raw grid (node ids unchanged), polled every ``poll_s``."""
        waiting, out = set(grid.push_messages(msgs)), []
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() <= deadline:
            got = list(grid.pull_messages(list(waiting)))
            out += got
            waiting -= {r.metadata.reply_to_message_id for r in got}
            if waiting:
                time.sleep(self.poll_s)
        return out


def as_addressed(msg: Message, context, call_next) -> Message:
    """Site-side mod: the message's destination becomes the node id the coordinator addressed (see ``ADDRESSED``)."""
    if ADDRESSED not in msg.content.config_records:
        return call_next(msg, context)
    real, node = msg.metadata.dst_node_id, int(msg.content.config_records[ADDRESSED]["node-id"])
    msg.content = RecordDict({k: v for k, v in msg.content.items() if k != ADDRESSED})
    msg.metadata.__dict__["_dst_node_id"] = node
    try:
        reply = call_next(msg, context)
    finally:  # also when the site raises: its error reply is made from the message and must leave from here too
        msg.metadata.__dict__["_dst_node_id"] = real
    # the reply leaves from the SuperNode's own Flower id: the SuperLink refuses a reply from another node
    reply.metadata.__dict__["_src_node_id"] = real
    return reply
