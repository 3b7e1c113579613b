"""The one interface every privacy mechanism implements.

A mechanism composes with protocols through these hooks, each optional (the
base class is the identity, so the harness calls every hook unconditionally):
- ``check(plan)``: prepare for the run's plan, or refuse it before training
  starts (budgets); ``close()`` when it ends;
- ``trainer(site_index)``: replaces a site's local training (DP-SGD, P3SGD);
- ``client_mods(site_index)``: Flower client mods around a site's ClientApp
  (clip-and-noise, encryption of what leaves the site);
- ``wrap_strategy(strategy)``: a Flower strategy wrapper for FedAvg-style
  protocols (server-side DP, robust or encrypted aggregation);
- ``reveal(predictor)``: the model as the sites see it (decrypted), for the
  harness's evaluation; the coordinator's view may be ciphertext;
- ``one_step_per_call()``: the inversion probe's view of a DP trainer;
- ``state_dict`` / ``load_state_dict``: what a checkpoint keeps.
``report()`` gives the result's privacy section (ε, δ and their unit).
Which protocols a mechanism works with is data (``protocols``; None: any),
checked by :func:`privmed.engine.session.resolve` before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.clientapp.typing import Mod
from flwr.serverapp.strategy import Strategy

if TYPE_CHECKING:
    from privmed.config import RunConfig
    from privmed.data.base import ArraySet
    from privmed.site import ModelSpec

# trainer(model, data, *, task, epochs, batch_size, lr, seed) -> metrics dict (must hold "num-examples")
Trainer = Callable[..., dict[str, float]]


@dataclass(frozen=True)
class Plan:
    """What a mechanism is told about the run it protects (built by :func:`privmed.engine.session.plan_of`)."""

    config: RunConfig
    # (name, training images) of each party that holds training data, as the harness builds them
    # (centralised: one party holding the pooled data)
    sites: tuple[tuple[str, ArraySet], ...]
    # epochs each of those parties trains under the plan (0: it does not train)
    epochs: tuple[int, ...]
    model: ModelSpec


class Mechanism:
    """No privacy mechanism: every hook is the identity."""

    name = "none"
    protocols: tuple[str, ...] | None = None  # the protocols it works with; None: any
    purpose = ""  # what it does, for the error when the protocol does not fit ("masks FedAvg updates")
    encrypts = False  # its client mods encrypt or mask what leaves a site (an inversion probe takes the update before)
    threat = ""  # what it changes in the threat matrix (privmed.threat), e.g. who adds the noise

    def check(self, plan: Plan) -> None:
        """Prepare for ``plan``; raise PrivmedError if the run must not start."""

    def at_coordinator(self) -> None:
        """This copy is a deployed coordinator's (called before :meth:`check`): it must hold no secret of the
        sites; an encrypting mechanism then makes or loads no keys and :meth:`reveal` returns what it is given."""

    def at_site(self) -> None:
        """This copy is one deployed site's (called before :meth:`check`), in its own process: a secret the sites
        share comes from the file they were given, not from this process."""

    def trainer(self, site_index: int) -> Trainer | None:
        return None

    def client_mods(self, site_index: int) -> list[Mod]:
        return []

    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        return strategy

    def reveal(self, predictor: Any) -> Any:
        """The model as a site sees it (the harness's view); encrypting mechanisms decrypt here."""
        return predictor

    def one_step_per_call(self) -> None:
        """Make each training call one step over the data it is given (the inversion probe's victim); DP trainers
        only."""

    def report(self) -> dict[str, Any]:
        return {"epsilon": None, "delta": None, "unit": None}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume (e.g. an accountant's history); JSON-serialisable."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` when an interrupted run resumes."""

    def close(self) -> None:
        """The run ended, finished or failed (a budget ledger drops the run's hold)."""


def train_only(mod: Mod) -> Mod:
    """``mod`` on ``train`` messages only: the harness's ``evaluate`` requests (the sites measuring the model)
    pass by it (no privacy budget is charged for them, no clipping key is expected in them)."""

    def wrapped(msg, context, call_next):
        if msg.metadata.message_type != "train":
            return call_next(msg, context)
        return mod(msg, context, call_next)

    wrapped.__name__ = getattr(mod, "__name__", "mod")
    return wrapped
