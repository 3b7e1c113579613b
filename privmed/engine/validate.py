"""Server-side checks of what a site sends back, before it touches the model.

The coordinator trusts no reply. A reply is rejected, with a reason, when it
is an error; when it holds other records than the protocol expects (one
weights record and one ``metrics`` record for a plain train reply); when its
metrics lack ``num-examples`` or hold a count that is not a whole number from
1 to the site's declared training-set size; when a metric is not a finite
number; when its weights have other keys, shapes or dtypes than those sent,
or hold a NaN/Inf; or when its update (weights received minus weights sent)
is more than ``ratio`` times the norm of a reference: the median norm of the
other sites' updates in the round (parallel protocols see them together), or
of the updates accepted so far in the run (sequential protocols), or, with
none to compare with, the norm of the weights sent. The protocol drops that
site for the round, records why under the site's real node id, and goes on.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from privmed.errors import PrivmedError

DEFAULT_NORM_RATIO = 100.0
NORM_RULE = (
    "an update is rejected when its norm exceeds the ratio times the median update norm of the other sites in the "
    "round (parallel protocols) or of the updates accepted so far (sequential), or of the weights sent when there is "
    "none to compare with"
)


def update_problem(arrays: ArrayRecord, reference: ArrayRecord, *, dtypes: bool = True) -> str | None:
    """Why ``arrays`` cannot be used in place of ``reference``, or None if it can (``dtypes``: theirs must match)."""
    if set(arrays.keys()) != set(reference.keys()):
        return f"weights have keys {sorted(arrays.keys())[:3]}..., expected {sorted(reference.keys())[:3]}..."
    for key, ref in reference.items():
        got = arrays[key]
        if tuple(got.shape) != tuple(ref.shape):
            return f"{key} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
        if dtypes and got.dtype != ref.dtype:
            return f"{key} has dtype {got.dtype}, expected {ref.dtype}"
        values = got.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"{key} holds NaN or Inf"
    return None


def records_problem(reply: Message, expected: Iterable[str]) -> str | None:
    """Why the records of ``reply`` are not exactly ``expected`` (record names), or None."""
    got, want = sorted(reply.content.keys()), sorted(expected)
    if got != want:
        return f"reply holds records {got}, expected {want}"
    return None


def metrics_problem(reply: Message, *, declared: int | None, required: Iterable[str] = ("num-examples",)) -> str | None:
    """Why the ``metrics`` record of ``reply`` cannot be used, or None.

    ``required``: the metric names it must hold; ``declared``: the site's
    training-set size as the coordinator knows it, the bound on
    ``num-examples`` (None: not known, only >= 1 is checked).
    """
    if "metrics" not in reply.content.metric_records:
        return "reply has no 'metrics' record"
    metrics = reply.content.metric_records["metrics"]
    for key, value in metrics.items():
        if isinstance(value, list) or not np.isfinite(value):
            return f"metric {key!r} is {value!r}, not a finite number"
    missing = sorted(set(required) - set(metrics.keys()))
    if missing:
        return f"metrics lack {missing}"
    if "num-examples" not in metrics:
        return None
    n = metrics["num-examples"]
    top = declared if declared is not None else np.inf
    if n != int(n) or not 1 <= n <= top:
        limit = f"the site's declared {declared}" if declared is not None else "any"
        return f"num-examples {n!r} is not a whole number from 1 to {limit}"
    return None


def reply_problem(
    reply: Message,
    reference: ArrayRecord | None,
    *,
    key: str = "arrays",
    declared: int | None = None,
    records: Iterable[str] | None = None,
    metrics: Iterable[str] = ("num-examples",),
) -> str | None:
    """Why a train reply must be rejected, or None.

    ``reference``: the weights sent (None: the reply's weights are not checked, e.g. a ciphertext);
    ``key``: the reply's weights record; ``records``: the record names expected (default: ``key`` and ``metrics``);
    ``metrics``: the metric names a ``metrics`` record must hold.
    """
    if reply.has_error():
        return f"site error: {reply.error.reason}"
    expected = tuple(records) if records is not None else (key, "metrics")
    problem = records_problem(reply, expected)
    if not problem and "metrics" in expected:
        problem = metrics_problem(reply, declared=declared, required=metrics)
    if problem or reference is None:
        return problem
    if key not in reply.content.array_records:
        return f"reply has no {key!r} record"
    return update_problem(reply.content.array_records[key], reference)


def update_norm(arrays: ArrayRecord, reference: ArrayRecord) -> float:
    """L2 norm of ``arrays - reference`` over the floating-point arrays, in float64 (1e30 weights do not overflow)."""
    total = 0.0
    for key, ref in reference.items():
        r = ref.numpy()
        if r.dtype.kind == "f":
            total += float(np.sum((arrays[key].numpy().astype(np.float64) - r.astype(np.float64)) ** 2))
    return float(np.sqrt(total))


def weights_norm(arrays: ArrayRecord) -> float:
    """L2 norm of the floating-point arrays (the fallback reference: the weights sent)."""
    values = (a.numpy() for a in arrays.values())
    return float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in values if v.dtype.kind == "f")))


def norm_problem(norm: float, reference: float, *, ratio: float) -> str | None:
    """Why an update of norm ``norm`` is out of bounds against ``reference`` (see the module docstring), or None."""
    if not np.isfinite(norm):
        return "update norm is not finite"
    if reference > 0 and norm > ratio * reference:
        return f"update norm {norm:.4g} is more than {ratio:g} x the reference {reference:.4g}"
    return None


def outliers(norms: dict[int, float], *, ratio: float, fallback: float) -> dict[int, str]:
    """Parallel protocols: node -> why, for updates beyond ``ratio`` x the median norm of the other sites' updates."""
    out = {}
    for node, norm in norms.items():
        others = [v for n, v in norms.items() if n != node]
        problem = norm_problem(norm, float(np.median(others)) if others else fallback, ratio=ratio)
        if problem:
            out[node] = problem
    return out


class NormGuard:
    """Sequential protocols: each update against the median norm of the updates accepted so far (a window)."""

    def __init__(self, ratio: float = DEFAULT_NORM_RATIO, window: int = 16) -> None:
        self.ratio = ratio
        self.accepted: deque[float] = deque(maxlen=window)

    def problem(self, norm: float, *, fallback: float) -> str | None:
        """None (and the norm joins the window) if ``norm`` is in bounds; else why not."""
        reference = float(np.median(self.accepted)) if self.accepted else fallback
        problem = norm_problem(norm, reference, ratio=self.ratio)
        if problem is None:
            self.accepted.append(norm)
        return problem


def odd_metric_keys(replies: dict[int, Message]) -> dict[int, str]:
    """node -> why, for replies whose metric names differ from most sites' (Flower's FedAvg needs them equal)."""
    keys = {node: tuple(sorted(r.content["metrics"].keys())) for node, r in replies.items()}
    if not keys:
        return {}
    common = Counter(keys.values()).most_common(1)[0][0]
    return {n: f"metrics {list(k)} differ from the other sites' {list(common)}" for n, k in keys.items() if k != common}


def by_destination(messages: Iterable[Message], replies: Iterable[Message]) -> dict[int, Message]:
    """node -> its reply, filed under the node each message was sent to (pushed messages carry their ids).

    Not the reply's source: on a Flower deployment the SuperLink answers for a
    node that failed with an error reply from node 1, itself. A second reply
    to one message, or a reply to none of them, is dropped.
    """
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    out: dict[int, Message] = {}
    for reply in replies:
        node = sent_to.get(reply.metadata.reply_to_message_id)
        if node is not None:
            out.setdefault(node, reply)
    return out


def train_checked(
    msg: Message, context: Context, call_next, arrays: ArrayRecord, config: ConfigRecord, *, site: str, refused: str
) -> tuple[ArrayRecord, Message]:
    """A site mod's inner step: train ``arrays`` with the site's handler, refuse a NaN or wrong-shaped update.

    Used by the mods that transform what leaves a site (encrypt, mask, seal):
    a bad update raises (the site's error reply names it, ``refused`` says what
    was not done with it) before it is transformed. Returns (update, reply);
    on a handler error, (``arrays``, the error reply).
    """
    msg.content = RecordDict({"arrays": arrays, "config": config})
    reply = call_next(msg, context)
    if reply.has_error():
        return arrays, reply
    update = reply.content["arrays"]
    problem = update_problem(update, arrays, dtypes=False)  # SecAgg+ hands the sites float64 weights to train
    if problem:
        raise PrivmedError(f"{site}: local update {problem}; {refused}")
    return update, reply
