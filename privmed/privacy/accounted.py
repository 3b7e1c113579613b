"""What every accounted DP mechanism shares: the plan, the budget check, the ledger.

A mechanism that spends a privacy budget subclasses :class:`AccountedMechanism`
and supplies the RDP curve each patient would spend at each site under the
run's plan (``planned_rdp``); it charges what it actually spent through
:meth:`AccountedMechanism.charge` as it spends it. With a ledger configured
(``ledger=sqlite:///...``, ``ledger_key=<file>``; a ``budget`` or a
``ledger_key`` without ``ledger`` uses the per-user default ledger), the
check refuses a run whose plan would push any patient over ``budget`` (ε at
``budget_delta``) before anything trains, and nothing is written for a
refused run. The run's ledger id and each site's charge count are kept by
the checkpoint, so a resumed run repeats the charges of its interrupted
round under the same numbers and the ledger records them once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from privmed.errors import PrivmedError
from privmed.options import describe, option_types
from privmed.options import parse_options as typed_options
from privmed.privacy.accounting import epsilon_from_rdp
from privmed.privacy.base import Mechanism, Plan
from privmed.privacy.randomness import guarantee

if TYPE_CHECKING:
    from privmed.data.base import ArraySet


@dataclass(frozen=True)
class BudgetOptions:
    ledger: str | None = None  # sqlite:///path
    ledger_key: str | None = None  # the hospitals' shared pseudonym key file
    budget: float | None = None  # ε limit per patient, over all runs
    budget_delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.budget is not None and not self.budget > 0:
            raise PrivmedError(f"budget must be > 0 (an ε limit per patient), got {self.budget}")
        if not 0 < self.budget_delta < 1:
            raise PrivmedError(f"budget_delta must be in (0, 1), got {self.budget_delta}")


def parse_options(cls: type, options: dict[str, Any], mechanism: str) -> tuple[Any, BudgetOptions]:
    """Split a mechanism's options into its own frozen config and the ledger options; unknown keys and wrong types
    are errors."""
    own, ledger = option_types(cls), option_types(BudgetOptions)
    unknown = sorted(set(options) - set(own) - set(ledger))
    if unknown:
        raise PrivmedError(
            f"unknown option {unknown[0]!r} for privacy mechanism {mechanism}; "
            f"valid options: {describe(cls)}, {describe(BudgetOptions)}"
        )
    owner = f"privacy mechanism {mechanism}"
    return (
        typed_options(cls, {k: v for k, v in options.items() if k in own}, owner=owner),
        typed_options(BudgetOptions, {k: v for k, v in options.items() if k in ledger}, owner=owner),
    )


class AccountedMechanism(Mechanism):
    """A DP mechanism with a per-site plan, per-patient charges and an optional budget ledger."""

    unit = "sample"
    noise_party = "each site"  # who adds the noise, from its own secret entropy

    def __init__(self, budget: BudgetOptions) -> None:
        self.budget = budget
        self.reproducible = False  # --reproducible-noise: noise from the run seed, not private
        self.sites: list[tuple[str, ArraySet]] = []
        self._ledger = None
        self._pseudonyms: dict[str, str] = {}
        self.run_id = ""  # the run's id in the ledger, kept across a resume
        self.seq: dict[int, int] = {}  # site index -> charges made so far (numbers them in the ledger)
        self.charged: dict[str, np.ndarray] = {}

    # --- subclasses ---
    def prepare(self, plan: Plan) -> None:
        """Validate targets and fix per-site parameters (noise levels) for the plan."""

    def planned_rdp(self, site_index: int) -> dict[str, np.ndarray]:
        """raw patient id -> RDP curve that site would spend under the plan."""
        raise NotImplementedError

    # --- shared ---
    @property
    def ledger_url(self) -> str | None:
        """The ledger this run charges: the one given, the per-user default if a budget or key asks for one, or none."""
        from privmed.privacy.ledger import default_url

        b = self.budget
        return b.ledger or (default_url() if b.budget is not None or b.ledger_key is not None else None)

    def check(self, plan: Plan) -> None:
        config = plan.config
        self.reproducible = config.reproducible_noise
        self.sites = list(plan.sites)
        self.prepare(plan)
        if self.ledger_url is None:
            return
        from privmed.privacy.ledger import Ledger
        from privmed.privacy.pseudonym import load_key, pseudonyms

        key = load_key(self.budget.ledger_key)
        self._pseudonyms = pseudonyms(key, np.concatenate([s.patient_ids for _, s in self.sites]))
        ledger = Ledger(self.ledger_url)
        self.run_id = self.run_id or (  # a resumed run keeps its id (its checkpoint's mechanism state)
            f"{config.run_name}@{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}.{time.time_ns() % 10**9:09d}"
        )
        ledger.reserve(
            run=config.run_name,
            run_id=self.run_id,
            plan=self._whole_plan(),
            limit=self.budget.budget,
            delta=self.budget.budget_delta,
        )
        self._ledger = ledger

    def _whole_plan(self) -> dict[str, np.ndarray]:
        """Pseudonym -> RDP the whole plan spends (the ledger counts what a resumed run, same id, charged of it)."""
        plan: dict[str, np.ndarray] = {}
        for i in range(len(self.sites)):
            for pid, rdp in self.planned_rdp(i).items():
                p = self._pseudonyms[pid]
                plan[p] = plan.get(p, 0) + rdp
        return plan

    def close(self) -> None:
        """The run ended (finished or failed): drop its hold; its charges stay."""
        if self._ledger is not None:
            self._ledger.release(run_id=self.run_id)

    def charge(self, site_index: int, rdp_by_patient: dict[str, np.ndarray]) -> None:
        """Record what a site spent just now (in the ledger when one is configured)."""
        for pid, rdp in rdp_by_patient.items():
            self.charged[pid] = self.charged.get(pid, 0) + rdp
        self.seq[site_index] = self.seq.get(site_index, 0) + 1
        if self._ledger is not None:
            name = self.sites[site_index][0]
            self._ledger.charge(
                run_id=self.run_id,
                site=name,
                unit=self.unit,
                rdp_by_patient={self._pseudonyms[p]: r for p, r in rdp_by_patient.items()},
                seq=self.seq[site_index],
            )

    def state_dict(self) -> dict[str, Any]:
        """This run's per-patient spend so far (the ledger keeps its own rows; a resumed run charges only what it
        adds)."""
        return {
            "charged": {p: [float(x) for x in r] for p, r in self.charged.items()},
            "run_id": self.run_id,
            "seq": {str(i): n for i, n in self.seq.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.charged = {p: np.asarray(r) for p, r in state.get("charged", {}).items()}
        self.run_id = str(state.get("run_id", ""))
        self.seq = {int(i): int(n) for i, n in state.get("seq", {}).items()}

    def noise_report(self) -> dict[str, Any]:
        """Where the noise came from, and what the result may claim (:mod:`privmed.privacy.randomness`)."""
        source = "the run seed (--reproducible-noise)" if self.reproducible else f"secret entropy of {self.noise_party}"
        statement = f"differential privacy at {self.unit} level, noise and sampling from {source}"
        return {"noise_source": source, "guarantee": guarantee(reproducible=self.reproducible, statement=statement)}

    def patient_report(self) -> dict[str, Any]:
        """This run's per-patient spend (max and mean ε at the ledger's δ) and where it was recorded."""
        delta = self.budget.budget_delta
        eps = [epsilon_from_rdp(r, delta=delta) for r in self.charged.values()]
        out: dict[str, Any] = {
            "patients_charged": len(eps),
            "patient_epsilon_max": max(eps, default=0.0),
            "patient_epsilon_mean": float(np.mean(eps)) if eps else 0.0,
            "patient_delta": delta,
            "patient_composition": "RDP curves summed order by order, converted once (Opacus)",
        }
        if self._ledger is not None:
            out["ledger"] = {"url": self._ledger.url, "path": str(self._ledger.path), "run_id": self.run_id}
        return {**out, **self.noise_report()}
