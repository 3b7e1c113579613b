"""A run's state after a round, saved atomically: enough to resume it where it stopped.

The checkpoint keeps the model as the sites see it (decrypted), the history,
rejections, the grid's byte and time counts, the protocol's own coordinator
state (``ctx.state``), the mechanism's state (an accountant's history; never
keys) and the global generators' streams, so a resumed run computes what the
uninterrupted one would have. It is read with ``torch.load(weights_only=True)``:
a malicious pickle is refused.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from privmed.config import RunConfig
from privmed.engine.result import json_default
from privmed.errors import PrivmedError
from privmed.files import private_dir, private_writer
from privmed.protocols.base import Predictor

if TYPE_CHECKING:
    from privmed.engine.session import Session


def config_key(config: RunConfig) -> str:
    """The config as saved (a checkpoint belongs to exactly one config)."""
    return json.dumps(config.to_dict(), sort_keys=True, default=json_default)


# what a checkpoint holds (``protocol_state`` and ``global_rng`` may be missing from older ones)
KEYS = {
    "config",
    "round",
    "ensemble",
    "members",
    "history",
    "rejections",
    "traffic",
    "site_seconds",
    "mechanism",
    "wall",
}


class Checkpoint:
    """The state of a run after a round: enough to resume it where it stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(
        self, session: Session, rnd: int, predictor: Predictor, history: list, wall: float, *, best: dict | None = None
    ) -> None:
        ctx, grid = session.ctx, session.grid
        members = _members(predictor)
        state = {
            "config": config_key(session.config),
            "round": rnd,
            "ensemble": isinstance(predictor, list),
            "members": [m.to_torch_state_dict() for m in members],
            "history": json.dumps(history),
            "rejections": json.dumps(ctx.rejections),
            "traffic": json.dumps(grid.traffic.records),
            "site_seconds": json.dumps(grid.site_seconds),
            "protocol_state": json.dumps(ctx.state, default=json_default),
            "global_rng": global_rng_state(),
            "mechanism": json.dumps(session.mechanism.state_dict(), default=json_default),
            "site_memory": session.site_memory,
            "best": None
            if best is None
            else {
                "round": best["round"],
                "loss": best["loss"],
                "sites": best.get("sites", {}),
                "ensemble": isinstance(best["predictor"], list),
                "members": [m.to_torch_state_dict() for m in _members(best["predictor"])],
            },  # each site's own memory (optimiser state), as the site would keep it
            "wall": wall,
        }
        private_dir(self.path.parent)
        with private_writer(self.path) as fh:
            torch.save(state, fh)

    def load(self, config: RunConfig) -> dict[str, Any]:
        """The saved state, checked to belong to ``config``."""
        if not self.path.exists():
            raise PrivmedError(f"nothing to resume: no checkpoint at {self.path} (run without --resume)")
        try:
            state = torch.load(self.path, weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise PrivmedError(
                f"checkpoint {self.path} is unreadable ({type(exc).__name__}); delete it and start again"
            ) from None
        missing = sorted(KEYS - set(state)) if isinstance(state, dict) else sorted(KEYS)
        if missing or not isinstance(state["round"], int) or state["round"] < 0:
            why = f"lacks {', '.join(missing)}" if missing else f"has round {state['round']!r}"
            raise PrivmedError(f"checkpoint {self.path} is damaged ({why}); delete it and start again")
        if state["config"] != config_key(config):
            raise PrivmedError(
                f"checkpoint {self.path} was made with a different config; use the same config or run without --resume"
            )
        return state

    @staticmethod
    def mechanism_state(state: dict[str, Any]) -> dict[str, Any]:
        return json.loads(state["mechanism"])

    @staticmethod
    def restore(state: dict[str, Any], session: Session, monitor: Any) -> float:
        """Load a saved state (:meth:`load`) into a fresh session and its monitor; return the wall seconds spent."""
        history = monitor.history
        ctx, grid = session.ctx, session.grid
        if state["round"] > session.rounds:
            raise PrivmedError(
                f"the checkpoint says round {state['round']} finished, but the run has {session.rounds}; "
                "delete the checkpoint and start again"
            )
        members = [ArrayRecord(sd) for sd in state["members"]]
        ctx.initial = members if state["ensemble"] else members[0]
        ctx.start_round = state["round"] + 1
        history[:] = json.loads(state["history"])
        ctx.rejections[:] = json.loads(state["rejections"])
        ctx.state.update(json.loads(state.get("protocol_state", "{}")))
        if "global_rng" in state:  # checkpoints made before it was kept lack it
            set_global_rng_state(state["global_rng"])
        grid.traffic.records[:] = json.loads(state["traffic"])
        grid.site_seconds.update({int(k): v for k, v in json.loads(state["site_seconds"]).items()})
        session.mechanism.load_state_dict(json.loads(state["mechanism"]))
        if state.get("best"):
            best = state["best"]
            members = [ArrayRecord(sd) for sd in best["members"]]
            predictor = members if best["ensemble"] else members[0]
            sites = {k: (float(v[0]), float(v[1])) for k, v in best.get("sites", {}).items()}
            monitor.best = {"round": best["round"], "loss": best["loss"], "predictor": predictor, "sites": sites}
        for i, memory in state.get("site_memory", {}).items():  # into the dicts the sites' apps hold
            for key, value in memory.items():
                session.site_memory[int(i)].setdefault(key, {}).update(value)
        return float(state["wall"])

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only if the run left nothing else there


def _members(predictor: Predictor) -> list[ArrayRecord]:
    return predictor if isinstance(predictor, list) else [predictor]


def global_rng_state() -> dict[str, Any]:
    """The global generators :func:`privmed.engine.session.seed_globals` seeds, as plain values and a tensor.

    ``torch.load(weights_only=True)`` reads them back. Flower draws from them
    (SecAgg+'s stochastic rounding from NumPy's, node sampling from
    ``random``): a resumed run that continues their streams computes what the
    uninterrupted run would have.
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
