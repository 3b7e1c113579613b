"""Our ε against Opacus' accountants and against Abadi et al. 2016's published figure."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from privmed.errors import PrivmedError
from privmed.privacy import accounting as acc


@pytest.mark.parametrize(
    "q,sigma,steps,delta",
    [(0.01, 4.0, 10_000, 1e-5), (0.25, 1.1, 40, 1e-3), (1.0, 2.0, 5, 1e-5), (0.05, 0.8, 300, 1e-6)],
)
def test_epsilon_equals_opacus_rdp_accountant(q, sigma, steps, delta):
    ref = RDPAccountant()
    ref.history = [(sigma, q, steps)]
    assert acc.history_epsilon([(sigma, q, steps)], delta=delta) == pytest.approx(
        ref.get_epsilon(delta=delta), abs=1e-6
    )
    assert acc.epsilon_sgm(q=q, noise_multiplier=sigma, steps=steps, delta=delta) == pytest.approx(
        ref.get_epsilon(delta=delta), abs=1e-6
    )


def test_prv_route_equals_opacus_prv_accountant():
    ref = PRVAccountant()
    ref.history = [(1.1, 0.1, 100)]
    assert acc.history_epsilon([(1.1, 0.1, 100)], delta=1e-5, accountant="prv") == pytest.approx(
        ref.get_epsilon(delta=1e-5), abs=1e-6
    )


def test_abadi_2016_published_value():
    # Abadi et al. 2016, Sec. 3.1: q = 0.01, σ = 4, δ = 1e-5, T = 10000 -> ε ≈ 1.26 with the moments accountant
    assert round(acc.abadi_moments_epsilon(q=0.01, noise_multiplier=4.0, steps=10_000, delta=1e-5), 2) == 1.26
    # Opacus' newer RDP -> (ε, δ) conversion is tighter than the paper's
    assert acc.epsilon_sgm(q=0.01, noise_multiplier=4.0, steps=10_000, delta=1e-5) < 1.26


@settings(max_examples=20, deadline=None)
@given(q=st.sampled_from([0.02, 0.1, 0.5]), sigma=st.sampled_from([0.7, 1.3, 4.0]), steps=st.integers(1, 500))
def test_epsilon_grows_with_steps_and_amplification_helps(q, sigma, steps):
    e1 = acc.epsilon_from_rdp(acc.rdp_sgm(q=q, noise_multiplier=sigma, steps=steps), delta=1e-5)
    e2 = acc.epsilon_from_rdp(acc.rdp_sgm(q=q, noise_multiplier=sigma, steps=steps + 10), delta=1e-5)
    assert e2 > e1 > 0
    unamplified = acc.rdp_group_gaussian(group_size=1, noise_multiplier=sigma, steps=steps)
    assert np.all(acc.rdp_sgm(q=q, noise_multiplier=sigma, steps=steps) <= unamplified + 1e-9)
    assert np.allclose(acc.rdp_group_gaussian(group_size=3, noise_multiplier=sigma, steps=steps), 9 * unamplified)


def test_pure_dp_rdp_bound():
    rdp = acc.rdp_pure(epsilon=0.5, releases=4)
    orders = np.asarray(acc.ORDERS)
    assert np.allclose(rdp, 4 * np.minimum(0.5, orders * 0.125))
    # over many releases the RDP composition beats adding ε (100 x 0.1 = 10)
    assert acc.epsilon_from_rdp(acc.rdp_pure(epsilon=0.1, releases=100), delta=1e-5) < 6.0


def test_calibrated_noise_never_overshoots_the_target():
    """The σ search uses a subset of the accountant's orders, so the reported ε stays at or below the target."""
    assert set(acc.INTEGER_ORDERS) <= set(acc.ORDERS)
    for eps, q, steps in ((0.9, 0.01, 100), (3.0, 0.05, 200), (8.0, 0.5, 40)):
        sigma = acc.calibrate(epsilon=eps, delta=1e-5, q=q, steps=steps, accountant="rdp")
        assert acc.history_epsilon([(sigma, q, steps)], delta=1e-5) <= eps


def test_calibrated_noise_reaches_target():
    sigma = acc.calibrate(epsilon=3.0, delta=1e-5, q=0.05, steps=200, accountant="rdp")
    eps = acc.epsilon_sgm(q=0.05, noise_multiplier=sigma, steps=200, delta=1e-5)
    assert 2.7 < eps <= 3.0


def test_impossible_targets_refused():
    with pytest.raises(PrivmedError, match=r"n=100 images at site site-0 \(1/n"):
        acc.check_target(delta=0.02, n=100, unit="image", site="site-0")
    with pytest.raises(PrivmedError, match="gives epsilon"):
        acc.check_reachable(epsilon=1.0, delta=1e-5, q=0.5, steps=1000, noise_multiplier=0.5, accountant="rdp")
    sigma = acc.calibrate(epsilon=0.5, delta=1e-5, q=0.01, steps=10, accountant="rdp")
    # the calibrated noise meets the target, and 10 % less noise does not: the smallest sigma, not just a finite one
    acc.check_reachable(epsilon=0.5, delta=1e-5, q=0.01, steps=10, noise_multiplier=sigma, accountant="rdp")
    with pytest.raises(PrivmedError, match="gives epsilon"):
        acc.check_reachable(epsilon=0.5, delta=1e-5, q=0.01, steps=10, noise_multiplier=0.9 * sigma, accountant="rdp")
