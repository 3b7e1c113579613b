"""Fault injection for the in-process engine: sites that crash, answer late, lose messages or corrupt updates.

``--faults crash=0.3,straggle=0.2:5s,drop=0.1,corrupt=0.05`` gives, per site
and round, the probability that the site is down for the whole round
(``crash``: every message gets an error reply, as a SuperNode's missing node
does), per message the probability that the reply arrives ``5 s`` late
(``straggle``), is lost (``drop``: no reply at all) or has its payload
corrupted on the way (``corrupt``: a float tensor gets NaNs, a byte string
gets a flipped byte). ``deadline=10s`` is how long the coordinator waits for a
reply: a straggler later than the deadline is lost like a dropped reply; an
earlier one is used, and its delay is added to the run's reported lateness
(time is simulated: nothing sleeps, so a bench with faults costs what one
without does).

Draws come from ``numpy.random.default_rng([seed, salt, round, node, n])``
(the run seed: faults are not privacy randomness), so a run with faults is a
function of its config and seed like any other, and does not depend on the
order in which the grid delivers messages. Only ``train`` messages of rounds
>= 1 are hit (a protocol's set-up round 0, e.g. HE key exchange, is not).

The injector is the :class:`~privmed.engine.grid.InProcessGrid`'s fault hook;
it records every fault it injects, and :func:`reliability` turns the record,
the protocol's rejections and the grid's traffic into result.json's
``reliability`` section: faults injected and survived, corruptions caught,
rounds lost (no site's update used).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict

from privmed.errors import PrivmedError

KINDS = ("crash", "straggle", "drop", "corrupt")
_SALT = 0xFA017
_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)s?$")


@dataclass(frozen=True)
class FaultPlan:
    """Probabilities of each fault (per site-round for ``crash``, per reply for the others)."""

    crash: float = 0.0
    straggle: float = 0.0
    straggle_s: float = 5.0
    drop: float = 0.0
    corrupt: float = 0.0
    deadline_s: float = 10.0

    def __post_init__(self) -> None:
        for kind in KINDS:
            p = getattr(self, kind)
            if not 0.0 <= p <= 1.0:
                raise PrivmedError(f"fault probability {kind}={p} must be in [0, 1]")
        if self.straggle_s < 0 or self.deadline_s <= 0:
            raise PrivmedError("a straggler's delay must be >= 0 s and the deadline > 0 s")

    @property
    def active(self) -> bool:
        return any(getattr(self, k) > 0 for k in KINDS)


def parse_faults(text: str) -> FaultPlan:
    """``"crash=0.3,straggle=0.2:5s,drop=0.1,corrupt=0.05,deadline=10s"`` -> :class:`FaultPlan` (``""``: none)."""
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in (*KINDS, "deadline"):
            raise PrivmedError(
                f"bad fault {item!r}; expected KIND=PROBABILITY with KIND one of {', '.join(KINDS)} "
                "(straggle=P:SECONDSs), or deadline=SECONDSs"
            )
        try:
            if key == "deadline":
                values["deadline_s"] = _seconds(raw)
            elif key == "straggle" and ":" in raw:
                p, delay = raw.split(":", 1)
                values["straggle"], values["straggle_s"] = float(p), _seconds(delay)
            else:
                values[key] = float(raw)
        except ValueError:
            raise PrivmedError(f"bad fault value in {item!r}; e.g. crash=0.3, straggle=0.2:5s, deadline=10s") from None
    return FaultPlan(**values)


def _seconds(raw: str) -> float:
    m = _SECONDS.match(raw.strip())
    if not m:
        raise ValueError(raw)
    return float(m.group(1))


@dataclass
class FaultInjector:
    """The in-process grid's fault hook: ``(message sent, site's reply) -> reply, or None if it is lost``."""

    plan: FaultPlan
    seed: int
    node_site: dict[int, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    _count: dict[tuple[int, int], int] = field(default_factory=dict)

    def __call__(self, msg: Message, reply: Message) -> Message | None:
        rnd = _round(msg)
        if msg.metadata.message_type != "train" or rnd < 1:
            return reply
        node = msg.metadata.dst_node_id
        n = self._count.get((rnd, node), 0)
        self._count[(rnd, node)] = n + 1
        site = self.node_site.get(node, str(node))
        # the crash draw is per (round, node): a crashed site fails every message of that round
        if np.random.default_rng([self.seed, _SALT, rnd, node]).random() < self.plan.crash:
            self._record(rnd, site, "crash")
            return Message(Error(code=0, reason=f"injected fault: {site} crashed in round {rnd}"), reply_to=msg)
        u = np.random.default_rng([self.seed, _SALT, rnd, node, n + 1]).random(4)
        if u[0] < self.plan.drop:
            self._record(rnd, site, "drop")
            return None
        if u[1] < self.plan.straggle:
            late = self.plan.straggle_s > self.plan.deadline_s
            self._record(rnd, site, "straggle", seconds=self.plan.straggle_s, past_deadline=late)
            if late:
                return None
        if u[2] < self.plan.corrupt and not reply.has_error():
            self._record(rnd, site, "corrupt")
            reply.content = corrupted(reply.content, np.random.default_rng([self.seed, _SALT, rnd, node, n + 1, 7]))
        return reply

    def _record(self, rnd: int, site: str, kind: str, **extra: Any) -> None:
        self.events.append({"round": rnd, "site": site, "fault": kind, **extra})


def _round(msg: Message) -> int:
    try:
        return int(msg.metadata.group_id)
    except ValueError:
        return 0


def corrupted(content: RecordDict, rng: np.random.Generator) -> RecordDict:
    """``content`` with its payload damaged: NaNs in one float tensor per ArrayRecord, a flipped byte in byte values."""
    out = RecordDict()
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays = {k: a.numpy().copy() for k, a in record.items()}
            floats = [k for k, a in arrays.items() if np.issubdtype(a.dtype, np.floating) and a.size]
            if floats:
                a = arrays[floats[int(rng.integers(len(floats)))]]
                a.flat[rng.integers(a.size, size=max(1, a.size // 10))] = np.nan
            out[name] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        elif isinstance(record, ConfigRecord):
            values = dict(record)
            for k, v in values.items():
                if isinstance(v, bytes) and v:
                    b = bytearray(v)
                    b[int(rng.integers(len(b)))] ^= 0xFF
                    values[k] = bytes(b)
            out[name] = ConfigRecord(values)
        else:
            out[name] = record
    return out


def reliability(
    events: list[dict[str, Any]], rejections: list[dict], traffic_records: list[dict], node_site: dict[int, str]
) -> dict[str, Any]:
    """result.json's fault figures: injected and survived, corruptions caught, rounds in which no update was used."""
    by_kind = {k: sum(1 for e in events if e["fault"] == k) for k in KINDS}
    site_node = {s: n for n, s in node_site.items()}
    rejected = {(int(r["round"]), int(r["node"])) for r in rejections}
    caught = sum(1 for e in events if e["fault"] == "corrupt" and (e["round"], site_node.get(e["site"])) in rejected)
    failed: dict[int, set[int]] = {}  # round -> nodes whose update was not used (rejected, lost or too late)
    for rnd, node in rejected:
        failed.setdefault(rnd, set()).add(node)
    for e in events:
        if e["fault"] == "drop" or (e["fault"] == "straggle" and e.get("past_deadline")):
            failed.setdefault(e["round"], set()).add(site_node.get(e["site"], -1))
    asked: dict[int, set[int]] = {}
    for r in traffic_records:
        if r["direction"] == "down" and r["type"] == "train" and str(r["round"]).isdigit() and int(r["round"]) >= 1:
            asked.setdefault(int(r["round"]), set()).add(int(r["node"]))
    lost = sorted(rnd for rnd, nodes in asked.items() if nodes <= failed.get(rnd, set()))
    return {
        "faults_injected": events,
        "faults_by_kind": by_kind,
        "faults_survived": len(events),  # the run is built only if it went on past every fault
        "corrupt_caught": caught,
        "late_seconds": sum(e.get("seconds", 0.0) for e in events if e["fault"] == "straggle"),
        "rounds_lost": lost,
    }
