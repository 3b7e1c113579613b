"""The one interface every privacy mechanism implements.

A mechanism composes with protocols through four hooks, each optional:
- ``trainer(site_index)``: replaces a site's local training (DP-SGD, P3SGD);
- ``client_mods(site_index)``: Flower client mods around a site's ClientApp
  (clip-and-noise, encryption of what leaves the site);
- ``wrap_strategy(strategy)``: a Flower strategy wrapper for FedAvg-style
  protocols (server-side DP, robust or encrypted aggregation);
- ``check(fed, config)``: refuse a run before training starts (budgets);
  ``close()`` when it ends.
``report()`` gives the result's privacy section (ε, δ and their unit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flwr.clientapp.typing import Mod
from flwr.serverapp.strategy import Strategy

if TYPE_CHECKING:
    from privmed.config import RunConfig
    from privmed.data.base import Federation

# trainer(model, data, *, task, epochs, batch_size, lr, seed) -> metrics dict (must hold "num-examples")
Trainer = Callable[..., dict[str, float]]


class Mechanism:
    """No privacy mechanism: every hook is the identity."""

    name = "none"

    def check(self, fed: Federation, config: RunConfig) -> None:
        """Raise PrivmedError if the run must not start."""

    def trainer(self, site_index: int) -> Trainer | None:
        return None

    def client_mods(self, site_index: int) -> list[Mod]:
        return []

    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        return strategy

    def report(self) -> dict[str, Any]:
        return {"epsilon": None, "delta": None, "unit": None}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume (e.g. an accountant's history); JSON-serialisable."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` when an interrupted run resumes."""

    def close(self) -> None:
        """The run ended, finished or failed (a budget ledger drops the run's hold)."""
