"""Client-level (site-level) DP for federated averaging: DP-FedAvg.

Papers: McMahan et al. 2018, "Learning differentially private recurrent
language models" (ICLR): clip each client's model update to norm C, average,
add Gaussian noise σC/n; Andrew et al. 2021, "Differentially private learning
with adaptive clipping" (NeurIPS): C follows a target quantile of update
norms, estimated with a noisy count. In the review: DP on what each site
sends in FL (Li 2019 and others). The unit of privacy is the whole site.
Implementation: Flower's own wrappers, nothing re-written:
``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping`` around the
FedAvg strategy (``wrap_strategy``) and, for client-side clipping, Flower's
``fixedclipping_mod`` / ``adaptiveclipping_mod`` at each site
(``client_mods``). What privmed adds: a mod setting every site's weight to 1
(the DP analysis needs a uniform average; FedAvg would weight by examples),
the ε accounting and the ledger charge. Accounting: Flower's RDP accountant
needs ``flwr[dp]`` (Google's ``dp_accounting``), which is not installed, so
ε comes from Opacus' RDP accountant with q = fraction of sites sampled per
round (1: every site trains every round), noise multiplier σ, steps = rounds.
With adaptive clipping σ is the effective noise multiplier of Andrew et al.
(Thm. 1): Flower raises the update noise so that the update and the noisy
clipped count (stddev σ_b, default max(sites/20, σ) so that 2σ_b > σ) together
are as private as one Gaussian release with σ; accounted as such.
Ledger: each site charges all its patients one round's RDP after each round
it trains in (site-level DP covers every patient of the site).
Noise: Flower draws the central noise (and the adaptive variant's noisy
count) from NumPy's global generator, which privmed seeds with the run seed;
:class:`SecretNoise` runs each aggregation on a secret seed and restores the
global stream afterwards (:mod:`privmed.privacy.randomness`). The party that
adds the noise is the aggregator — the coordinator — which therefore sees
the un-noised aggregate: central DP protects the sites from the users of the
released model and from each other, not from the coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.serverapp.strategy import Strategy

from privmed.errors import PrivmedError
from privmed.privacy.accounted import AccountedMechanism, BudgetOptions, parse_options
from privmed.privacy.accounting import (
    calibrate,
    check_dp_settings,
    check_reachable,
    check_target,
    epsilon_from_rdp,
    rdp_sgm,
)
from privmed.privacy.base import Plan, train_only
from privmed.privacy.randomness import secret_global_numpy

SIDES = ("server", "client")
CLIPPINGS = ("fixed", "adaptive")


@dataclass(frozen=True)
class DPFedAvgConfig:
    epsilon: float | None = None
    noise_multiplier: float | None = None
    clipping_norm: float = 1.0  # fixed clipping, or the initial norm for adaptive clipping
    side: str = "server"  # who clips: the (trusted) server, or each site before sending
    clipping: str = "fixed"
    target_quantile: float = 0.5
    delta: float = 1e-5

    def __post_init__(self) -> None:
        check_dp_settings(
            epsilon=self.epsilon, noise_multiplier=self.noise_multiplier, delta=self.delta, mechanism="DP-FedAvg"
        )
        if not self.clipping_norm > 0:
            raise PrivmedError(f"clipping_norm must be > 0, got {self.clipping_norm}")
        if self.side not in SIDES or self.clipping not in CLIPPINGS:
            raise PrivmedError(f"side must be one of {', '.join(SIDES)} and clipping one of {', '.join(CLIPPINGS)}")
        if not 0 <= self.target_quantile <= 1:
            raise PrivmedError(f"target_quantile (adaptive clipping) must be in [0, 1], got {self.target_quantile}")


def uniform_weight_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    """Report one example per site, so FedAvg averages uniformly (what the DP analysis assumes)."""
    out = call_next(msg, ctx)
    if not out.has_error() and "metrics" in out.content:
        out.content["metrics"]["num-examples"] = 1.0
    return out


class SecretNoise(Strategy):
    """Wrap Flower's DP strategy: its aggregation (which adds the noise) draws from a secret seed, not the run's."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round, arrays, config, grid):
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        with secret_global_numpy():
            return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)


class DPFedAvg(AccountedMechanism):
    name = "dp-fedavg"
    unit = "site"
    noise_party = "the aggregator (the coordinator, which sees the aggregate before the noise)"
    threat = (
        "central noise added by the coordinator: it protects the sites from the model's users and from each "
        "other, not from the coordinator, which sees every (clipped) update before the noise"
    )

    def __init__(self, cfg: DPFedAvgConfig, budget: BudgetOptions) -> None:
        super().__init__(budget)
        self.cfg = cfg
        self.sigma = 0.0
        self.n_sites = 0
        self.rounds_done: dict[int, int] = {}

    protocols = ("fedavg",)
    purpose = "wraps Flower's FedAvg strategy"

    def prepare(self, plan: Plan) -> None:
        config = plan.config
        cfg, self.n_sites = self.cfg, len(self.sites)
        check_target(delta=cfg.delta, n=self.n_sites, unit="site")
        rounds = config.train.rounds
        self.rounds = rounds
        if cfg.noise_multiplier is None:
            self.sigma = calibrate(epsilon=cfg.epsilon, delta=cfg.delta, q=1.0, steps=rounds, accountant="rdp")
        else:
            self.sigma = cfg.noise_multiplier
            if cfg.epsilon is not None:
                check_reachable(
                    epsilon=cfg.epsilon,
                    delta=cfg.delta,
                    q=1.0,
                    steps=rounds,
                    noise_multiplier=self.sigma,
                    accountant="rdp",
                )

    @property
    def count_stddev(self) -> float:
        """Stddev of the noisy clipped count (adaptive): Flower's default sites/20, raised to σ if that is too low."""
        return max(self.n_sites / 20, self.sigma)

    def round_rdp(self, rounds: int) -> np.ndarray:
        return rdp_sgm(q=1.0, noise_multiplier=self.sigma, steps=rounds)

    def planned_rdp(self, site_index: int) -> dict[str, np.ndarray]:
        rdp = self.round_rdp(self.rounds)
        return {str(p): rdp for p in np.unique(self.sites[site_index][1].patient_ids)}

    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        dp = self._dp_strategy(strategy)
        return dp if self.reproducible else SecretNoise(dp)

    def _dp_strategy(self, strategy: Strategy) -> Strategy:
        from flwr.serverapp import strategy as s

        cfg, n = self.cfg, self.n_sites
        if not n:
            raise PrivmedError("dp-fedavg was not prepared: call check(plan) first")
        cls = getattr(s, f"DifferentialPrivacy{cfg.side.title()}Side{cfg.clipping.title()}Clipping")
        if cfg.clipping == "fixed":
            return cls(strategy, noise_multiplier=self.sigma, clipping_norm=cfg.clipping_norm, num_sampled_clients=n)
        return cls(
            strategy,
            noise_multiplier=self.sigma,
            num_sampled_clients=n,
            initial_clipping_norm=cfg.clipping_norm,
            target_clipped_quantile=cfg.target_quantile,
            clipped_count_stddev=self.count_stddev,
        )

    def client_mods(self, site_index: int) -> list[Mod]:
        from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

        def charge_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
            out = call_next(msg, ctx)
            if not out.has_error():  # this site's update was released for one round
                self.rounds_done[site_index] = self.rounds_done.get(site_index, 0) + 1
                rdp = self.round_rdp(1)
                self.charge(site_index, {str(p): rdp for p in np.unique(self.sites[site_index][1].patient_ids)})
            return out

        mods: list[Mod] = [charge_mod, uniform_weight_mod]
        if self.cfg.side == "client":
            mods.append(fixedclipping_mod if self.cfg.clipping == "fixed" else adaptiveclipping_mod)
        return [train_only(m) for m in mods]  # Flower's clipping mods do not check the message type

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rounds_done": {str(k): v for k, v in self.rounds_done.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rounds_done = {int(k): int(v) for k, v in state.get("rounds_done", {}).items()}

    def report(self) -> dict[str, Any]:
        rounds = max(self.rounds_done.values(), default=0)
        return {
            "epsilon": epsilon_from_rdp(self.round_rdp(rounds), delta=self.cfg.delta),
            "delta": self.cfg.delta,
            "unit": self.unit,
            "accountant": "rdp (Opacus; Flower's needs flwr[dp])",
            "noise_multiplier": self.sigma,
            "target_epsilon": self.cfg.epsilon,
            "clipping": f"{self.cfg.side}-side {self.cfg.clipping}",
            "clipping_norm": self.cfg.clipping_norm,
            "rounds_accounted": rounds,
            "site_sampling_rate": 1.0,
            **self.patient_report(),
        }


def make(options: dict[str, Any]) -> DPFedAvg:
    cfg, budget = parse_options(DPFedAvgConfig, options, "dp-fedavg")
    return DPFedAvg(cfg, budget)
