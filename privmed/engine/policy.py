"""A hospital decides what runs on its data: the site's policy file, checked by the site before it trains.

After Fed-BioMed's per-site approval of training plans. Each site holds a
TOML file (``privmed site --policy FILE``)::

    protocols = ["fedavg", "cwt", "admission"]   # allowed protocols (absent: any)
    mechanisms = ["dp-sgd", "secagg"]            # allowed privacy mechanisms (absent: any; "none" = no mechanism)
    require_dp = true                            # refuse runs without differential privacy
    max_epsilon = 3.0                            # the largest ε per patient a run may target
    ledger = "sqlite:///runs/site-ledger.db"     # the site's own patient budget ledger ...
    ledger_key = "runs/site.key"                 # ... and pseudonym key: max_epsilon then caps each
                                                 # patient's spend over all runs, not one run's

The site checks the run's config (which arrives with the run) when the run's
first message comes, before any training; a run that breaks the policy gets
an error reply to every message, naming the rule (``site-1 refuses: ...``),
which the coordinator records as that site's rejected updates
(``reliability.rejected_updates``) and reports. With a ledger, the site's DP
mechanism is checked against the site's own ledger and limit, not the ones
the coordinator's config names, so a patient's remaining budget is the
site's to keep (:class:`privmed.privacy.accounted.AccountedMechanism`
refuses a plan that would exceed it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privmed.config import read_toml
from privmed.errors import PrivmedError
from privmed.options import parse_options


@dataclass(frozen=True)
class SitePolicy:
    protocols: list | None = None
    mechanisms: list | None = None
    require_dp: bool = False
    max_epsilon: float | None = None
    ledger: str | None = None
    ledger_key: str | None = None

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise PrivmedError(f"max_epsilon must be > 0, got {self.max_epsilon}")
        if (self.ledger is None) != (self.ledger_key is None):
            raise PrivmedError("a site ledger needs both ledger (sqlite:///...) and ledger_key (the pseudonym key)")


def load_policy(path: str | Path) -> SitePolicy:
    return parse_options(SitePolicy, read_toml(path, what="site policy"), owner=f"site policy {path}")


def policy_problem(
    policy: SitePolicy, *, site: str, protocol: str, mechanism: str, dp: bool, epsilon: float | None
) -> str | None:
    """Why ``site`` refuses a run of ``protocol`` with ``mechanism`` (``dp``: it is differentially private,
    ``epsilon``: its target ε per patient), or None."""
    if policy.protocols is not None and protocol not in policy.protocols:
        return (
            f"{site} refuses: protocol {protocol} is not allowed by its policy (allowed: {', '.join(policy.protocols)})"
        )
    if policy.mechanisms is not None and mechanism not in policy.mechanisms:
        allowed = ", ".join(policy.mechanisms)
        return f"{site} refuses: privacy mechanism {mechanism} is not allowed by its policy (allowed: {allowed})"
    if policy.require_dp and not dp:
        return f"{site} refuses: its policy requires differential privacy and {mechanism} is not DP"
    if policy.max_epsilon is not None and dp:
        if epsilon is None:
            return f"{site} refuses: the run states no target ε and its policy caps ε at {policy.max_epsilon:g}"
        if epsilon > policy.max_epsilon:
            return (
                f"{site} refuses: target ε {epsilon:g} per patient exceeds its policy's maximum {policy.max_epsilon:g}"
            )
    return None


def site_privacy(policy: SitePolicy, privacy: dict[str, Any], *, dp: bool) -> dict[str, Any]:
    """The run's privacy options as the site applies them: its own ledger, key and per-patient limit for DP."""
    if not dp or policy.ledger is None:
        return dict(privacy)
    out = {k: v for k, v in privacy.items() if k not in ("ledger", "ledger_key", "budget")}
    out.update(ledger=policy.ledger, ledger_key=policy.ledger_key)
    if policy.max_epsilon is not None:
        out["budget"] = policy.max_epsilon
    return out
