"""Privacy accounting: pure functions over Opacus' accountants.

Every DP mechanism of privmed accounts with Opacus (RDP of the sampled
Gaussian mechanism, Mironov et al. 2019; RDP -> (ε, δ) conversion of Balle et
al. 2020; or the PRV accountant of Gopi et al. 2021). What this module adds:
RDP curves on one fixed grid of orders (so curves from different runs, sites
and mechanisms can be summed in the patient ledger), the bound used for a
patient with several images under sample-level DP, the bound for pure ε-DP
releases (DSSGD), the validation of privacy targets, and Abadi et al.'s
original moments-accountant conversion (integer orders up to 32), used only to
check our numbers against the paper's published value.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import get_noise_multiplier

from privmed.errors import PrivmedError

ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)
ACCOUNTANTS = ("rdp", "prv")
# the integer orders of ORDERS (closed-form RDP, fast): used to search σ; a subset, so its ε is never below the grid's
INTEGER_ORDERS = tuple(int(a) for a in ORDERS if float(a).is_integer())


@lru_cache(maxsize=1024)
def _rdp_one_step(q: float, noise_multiplier: float) -> tuple[float, ...]:
    return tuple(compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=1, orders=list(ORDERS)))


def rdp_sgm(*, q: float, noise_multiplier: float, steps: int) -> np.ndarray:
    """RDP curve (on :data:`ORDERS`) of ``steps`` sampled Gaussian steps, rate ``q``."""
    if steps <= 0 or q <= 0:
        return np.zeros(len(ORDERS))
    return int(steps) * np.asarray(_rdp_one_step(min(float(q), 1.0), float(noise_multiplier)))  # RDP is linear in steps


def rdp_group_gaussian(*, group_size: int, noise_multiplier: float, steps: int) -> np.ndarray:
    """RDP of ``steps`` Gaussian steps for a group of ``group_size`` records, without subsampling amplification.

    A patient with k images under sample-level DP-SGD changes the summed,
    clipped gradient by at most k*C while the noise is σ*C: each step is a
    Gaussian mechanism of sensitivity k/σ, RDP(α) = α k² / (2σ²). Loose but
    valid (subsampling can only lower it); for k = 1 use :func:`rdp_sgm`.
    """
    orders = np.asarray(ORDERS)
    return steps * orders * group_size**2 / (2.0 * noise_multiplier**2)


def sample_level_patient_rdp(
    patient_ids: np.ndarray, *, q: float, noise_multiplier: float, steps: int
) -> dict[str, np.ndarray]:
    """Per patient, what sample-level DP steps spent: sampled Gaussian for one image, the group bound for k > 1."""
    ids, counts = np.unique(patient_ids, return_counts=True)
    one = rdp_sgm(q=q, noise_multiplier=noise_multiplier, steps=steps)
    return {
        str(p): one if k == 1 else rdp_group_gaussian(group_size=int(k), noise_multiplier=noise_multiplier, steps=steps)
        for p, k in zip(ids, counts)
    }


def rdp_pure(*, epsilon: float, releases: int) -> np.ndarray:
    """RDP of ``releases`` ε-DP releases: min(ε, α ε²/2) each (Mironov 2017 Prop. 3; Bun & Steinke 2016)."""
    orders = np.asarray(ORDERS)
    return releases * np.minimum(epsilon, orders * epsilon**2 / 2.0)


def epsilon_from_rdp(rdp: np.ndarray, *, delta: float) -> float:
    """(ε, δ) from an RDP curve on :data:`ORDERS` (Opacus' conversion)."""
    if not np.any(rdp):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": expected for large group bounds
        eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=list(rdp), delta=delta)
    return float(eps)


def epsilon_sgm(*, q: float, noise_multiplier: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """ε of ``steps`` sampled Gaussian steps with Opacus' ``accountant`` ("rdp" or "prv")."""
    from opacus.accountants import create_accountant

    if steps <= 0:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, q, int(steps))]
    return float(acc.get_epsilon(delta=delta))


def history_epsilon(history: list[tuple[float, float, int]], *, delta: float, accountant: str = "rdp") -> float:
    """ε of an Opacus accountant history [(σ, q, steps), ...]; RDP through the cached per-step curves (same result)."""
    if not history:
        return 0.0
    if accountant == "rdp":
        return epsilon_from_rdp(sum(rdp_sgm(q=q, noise_multiplier=s, steps=n) for s, q, n in history), delta=delta)
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def abadi_moments_epsilon(*, q: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """Abadi et al. 2016's conversion: min over integer λ ≤ 32 of (α(λ) + log(1/δ)) / λ.

    Only for comparing with the paper (Opacus' conversion is tighter).
    """
    lambdas = list(range(1, 33))
    rdp = np.asarray(
        compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=steps, orders=[lam + 1 for lam in lambdas])
    )
    return float(min(r + math.log(1 / delta) / lam for r, lam in zip(rdp, lambdas)))


def check_dp_settings(*, epsilon: float | None, noise_multiplier: float | None, delta: float, mechanism: str) -> None:
    """A DP mechanism's own settings: a target (ε or σ), each positive, δ in (0, 1)."""
    if epsilon is None and noise_multiplier is None:
        raise PrivmedError(f"{mechanism} needs a target: give epsilon=<ε> (noise calibrated) or noise_multiplier=<σ>")
    if epsilon is not None and not epsilon > 0:
        raise PrivmedError(f"epsilon must be > 0, got {epsilon}")
    if noise_multiplier is not None and not noise_multiplier > 0:
        raise PrivmedError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if not 0 < delta < 1:
        raise PrivmedError(f"delta must be in (0, 1), got {delta}")


def check_target(*, delta: float, n: int, unit: str, site: str | None = None) -> None:
    """Refuse δ outside (0, 1/n) for n privacy units (ε ≤ 0 is refused by the mechanisms' configs)."""
    if not 0 < delta < 1.0 / max(n, 1):
        where = f"at site {site}" if site else "in the run"
        raise PrivmedError(
            f"delta={delta:g} must be in (0, 1/n) with n={n} {unit}s {where} (1/n={1 / max(n, 1):.3g}); lower delta"
        )


@lru_cache(maxsize=256)
def calibrate(*, epsilon: float, delta: float, q: float, steps: int, accountant: str) -> float:
    """The noise multiplier that reaches ``epsilon`` after ``steps`` steps (Opacus' search).

    With the RDP accountant the search uses the integer orders of the grid
    only (fast closed form); their ε is never below the full grid's, so σ is
    conservative.
    """
    extra = {"alphas": list(INTEGER_ORDERS)} if accountant == "rdp" else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")  # at the extreme σ the search tries
            return float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=min(q, 1.0),
                    steps=int(steps),
                    accountant=accountant,
                    epsilon_tolerance=0.01,
                    **extra,
                )
            )
    except ValueError as exc:
        raise PrivmedError(
            f"cannot reach epsilon={epsilon} with delta={delta:g} in {steps} steps ({exc}); even infinite noise "
            "cannot: raise epsilon or delta"
        ) from None


def check_reachable(
    *, epsilon: float, delta: float, q: float, steps: int, noise_multiplier: float, accountant: str
) -> None:
    """With both a target and a noise level, the noise must meet the target over the planned steps."""
    got = epsilon_sgm(q=q, noise_multiplier=noise_multiplier, steps=steps, delta=delta, accountant=accountant)
    if got > epsilon * 1.0001:
        raise PrivmedError(
            f"noise_multiplier={noise_multiplier} gives epsilon={got:.3g} over the {steps} planned steps, "
            f"above the target {epsilon}; raise noise_multiplier or give only one of them"
        )
