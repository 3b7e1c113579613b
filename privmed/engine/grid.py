"""An in-process implementation of Flower's ``Grid``.

Protocols are written against ``flwr.serverapp.Grid`` so the same ServerApp
logic runs here (one process, no Ray, no sockets) and on a Flower
SuperLink/SuperNode deployment. What Flower's own ``InMemoryGrid`` lacks and
this adds: it calls each site's ``ClientApp`` directly, serialises every
message in both directions with Flower's own object encoding (so the site and
the coordinator never share a Python object, and the bytes counted are the
bytes Flower would send), and records those bytes per node and round.
A site handler that raises is turned into an error reply, as a SuperNode does,
so a protocol can drop that site and go on.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, no_object_id_recompute
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE_ID = 1  # Flower's SUPERLINK_NODE_ID
# group ids of the harness's own messages (the sites' evaluation after a round): not the protocol's traffic,
# not the sites' training time, and no injected faults
HARNESS_GROUP = "harness-"


@contextmanager
def setup_frozen() -> Iterator[None]:
    """Keep what was built before training (data, site apps, models) out of the garbage collector's passes.

    A generation-2 collection rescans every tracked object: with 100 sites
    that took ~0.13 s and landed in whichever round triggered it, as
    coordinator time (benchmarks/scale.py, round 3: 1.33x the sites' time
    instead of 1.25x). ``gc.freeze`` moves the existing objects out of the
    collector's view for the run; ``gc.unfreeze`` returns them after, so
    nothing is kept alive longer than without it.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def to_wire(msg: Message, cache: dict[int, dict[str, bytes]] | None = None) -> tuple[str, dict[str, bytes]]:
    """Flower's wire form of a message: root object id and every object's bytes.

    ``cache`` (keyed by the id of a message's content) lets a broadcast, where
    one RecordDict goes to every site, be serialised once per round instead of
    once per site; the bytes counted are the same.
    """
    with no_object_id_recompute():  # hash each nested object once, not once per ancestor
        key = id(msg.content) if msg.has_content() else None
        if cache is not None and key in cache:
            contents = dict(cache[key])
        else:
            contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg.content).items()} if key else {}
            if cache is not None and key is not None:
                cache[key] = dict(contents)
        contents[msg.object_id] = msg.deflate()
        return msg.object_id, contents


def from_wire(root: str, contents: dict[str, bytes]) -> Message:
    msg = inflate_object_from_contents(root, dict(contents))
    assert isinstance(msg, Message)
    return msg


def wire_copy(msg: Message, cache: dict[int, dict[str, bytes]] | None = None) -> tuple[Message, int]:
    """Serialise and deserialise ``msg``; return the copy and its size in bytes."""
    root, contents = to_wire(msg, cache)
    copy = from_wire(root, contents)
    # Metadata travels beside the object tree in Flower; copy it explicitly.
    copy.metadata.__dict__.update(msg.metadata.__dict__)
    return copy, sum(len(b) for b in contents.values())


@dataclass
class Traffic:
    """Bytes per (round, node, direction); direction is "down" (to site) or "up"."""

    records: list[dict] = field(default_factory=list)

    def add(self, group: str, node: int, direction: str, nbytes: int, message_type: str) -> None:
        self.records.append(
            {"round": group, "node": node, "direction": direction, "bytes": nbytes, "type": message_type}
        )

    def total(self, direction: str | None = None) -> int:
        return sum(r["bytes"] for r in self.records if direction in (None, r["direction"]))

    def by_round(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            d = out.setdefault(r["round"], {"up": 0, "down": 0})
            d[r["direction"]] += r["bytes"]
        return out

    def by_node(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for r in self.records:
            d = out.setdefault(r["node"], {"up": 0, "down": 0})
            d[r["direction"]] += r["bytes"]
        return out


# A fault hook may replace a site's reply (e.g. with NaN arrays) or drop it (return None).
FaultHook = Callable[[Message, Message], "Message | None"]


class InProcessGrid(Grid):
    """Runs each site's ClientApp in this process when its messages are pulled."""

    def __init__(
        self,
        apps: dict[int, ClientApp],
        *,
        run_config: dict | None = None,
        fault: FaultHook | None = None,
        node_configs: dict[int, dict] | None = None,
    ) -> None:
        if not apps:
            raise ValueError("an InProcessGrid needs at least one site")
        self._apps = dict(apps)
        self._contexts = {
            nid: Context(
                run_id=1,
                node_id=nid,
                node_config=dict((node_configs or {}).get(nid, {})),  # a SuperNode's --node-config (tests)
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for nid in self._apps
        }
        self._run = Run.create_empty(run_id=1)
        # Flower's Message() reads the sender's identity from this process-wide
        # slot, which a ServerApp process sets; in-process we are that process.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE_ID, 0
        self._pending: dict[str, Message] = {}
        self._counter = 0
        self.traffic = Traffic()
        self.site_seconds: dict[int, float] = {nid: 0.0 for nid in self._apps}
        self.fault = fault

    # -- Grid interface -------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._apps:
                raise ValueError(f"no site with node id {msg.metadata.dst_node_id}")
            self._counter += 1
            mid = f"m{self._counter}"
            msg.metadata.__dict__["_message_id"] = mid
            msg.metadata.__dict__["_src_node_id"] = SERVER_NODE_ID
            self._pending[mid] = msg
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = []
        broadcast: dict[int, dict[str, bytes]] = {}  # content serialised once per batch
        for mid in message_ids:
            msg = self._pending.pop(mid, None)
            if msg is None:
                continue
            reply = self._deliver(msg, broadcast)
            if reply is not None:
                replies.append(reply)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))

    # -- delivery ---------------------------------------------------------
    def _deliver(self, msg: Message, broadcast: dict[int, dict[str, bytes]]) -> Message | None:
        nid = msg.metadata.dst_node_id
        group, mtype = msg.metadata.group_id, msg.metadata.message_type
        counted = not group.startswith(HARNESS_GROUP)  # the harness's evaluation is not the protocol's
        inbound, nbytes = wire_copy(msg, broadcast)
        if counted:
            self.traffic.add(group, nid, "down", nbytes, mtype)
        t0 = time.perf_counter()
        try:
            reply = self._apps[nid](inbound, self._contexts[nid])
        except Exception as exc:  # a site's failure is a reply, as on a SuperNode
            reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=inbound)
        if counted:
            self.site_seconds[nid] += time.perf_counter() - t0
        if self.fault is not None and counted:
            reply = self.fault(msg, reply)
            if reply is None:
                return None
        outbound, nbytes = wire_copy(reply)
        if counted:
            self.traffic.add(group, nid, "up", nbytes, mtype)
        outbound.metadata.__dict__["_message_id"] = f"r{mid_num(msg)}"
        return outbound


def mid_num(msg: Message) -> str:
    return msg.metadata.message_id.lstrip("m")
