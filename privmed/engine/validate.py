"""Server-side checks of what a site sends back, before it touches the model.

A reply that is an error, lacks weights, has weights of the wrong shape or
holds a NaN/Inf is rejected with a reason; the protocol drops it and the
round goes on with the other sites.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from privmed.errors import PrivmedError


def update_problem(arrays: ArrayRecord, reference: ArrayRecord) -> str | None:
    """Why ``arrays`` cannot be used in place of ``reference``, or None if it can."""
    if set(arrays.keys()) != set(reference.keys()):
        return f"weights have keys {sorted(arrays.keys())[:3]}..., expected {sorted(reference.keys())[:3]}..."
    for key, ref in reference.items():
        got = arrays[key].numpy()
        if tuple(got.shape) != tuple(ref.shape):
            return f"{key} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
        if np.issubdtype(got.dtype, np.floating) and not np.isfinite(got).all():
            return f"{key} holds NaN or Inf"
    return None


def reply_problem(reply: Message, reference: ArrayRecord | None, *, key: str = "arrays") -> str | None:
    """Why a train reply must be rejected, or None."""
    if reply.has_error():
        return f"site error: {reply.error.reason}"
    if reference is None:
        return None
    if key not in reply.content.array_records:
        return f"reply has no {key!r} record"
    return update_problem(reply.content.array_records[key], reference)


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
    problem = update_problem(update, arrays)
    if problem:
        raise PrivmedError(f"{site}: local update {problem}; {refused}")
    return update, reply
