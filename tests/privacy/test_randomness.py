"""Privacy randomness comes from the secret entropy of the party that adds it, and has the stated magnitude.

Two runs with the same seed must draw different DP noise (it cannot be replayed
from the seed the coordinator sends or result.json records) unless
``reproducible_noise`` is set, and then the result must say it is not private.
Each noise term is checked by its magnitude, so deleting it fails a test.
"""

import numpy as np
import pytest
import torch

from privmed.config import RunConfig
from privmed.privacy.randomness import NOT_PRIVATE, secret_global_numpy
from privmed.protocols import dssgd
from privmed.protocols.base import TrainSettings
from privmed.run import execute

RUNS = {
    "dp-sgd": ("centralised", {"mechanism": "dp-sgd", "noise_multiplier": 1.0, "delta": 1e-3}, {}),
    "p3sgd": ("centralised", {"mechanism": "p3sgd", "noise_multiplier": 1.0, "delta": 1e-3}, {}),
    "dp-fedavg": ("fedavg", {"mechanism": "dp-fedavg", "noise_multiplier": 1.0, "delta": 1e-3}, {}),
    "dssgd-svt": ("dssgd", {}, {"theta_u": 0.5, "gamma": 0.01, "dp_epsilon": 1.0}),
}


def flat(predictor) -> np.ndarray:
    return np.concatenate([a.numpy().ravel() for a in predictor.values()])


def run_twice(fed, name, *, reproducible):
    protocol, privacy, options = RUNS[name]
    cfg = RunConfig(
        protocol=protocol,
        privacy=privacy,
        options=options,
        reproducible_noise=reproducible,
        train=TrainSettings(rounds=1, batch_size=4, lr=0.05),
    )
    return execute(cfg, fed=fed), execute(cfg, fed=fed)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_same_seed_gives_different_noise_and_the_result_claims_privacy(toy_fed, name):
    a, b = run_twice(toy_fed, name, reproducible=False)
    assert not np.array_equal(flat(a.predictor), flat(b.predictor))
    assert a.privacy["guarantee"] != NOT_PRIVATE and "secret entropy" in a.privacy["noise_source"]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_reproducible_noise_repeats_and_says_the_result_is_not_private(toy_fed, name):
    a, b = run_twice(toy_fed, name, reproducible=True)
    np.testing.assert_array_equal(flat(a.predictor), flat(b.predictor))
    assert a.privacy["guarantee"] == NOT_PRIVATE


def test_without_dp_a_run_stays_a_function_of_its_seed(toy_fed):
    cfg = RunConfig(protocol="fedavg", train=TrainSettings(rounds=1, batch_size=4))
    np.testing.assert_array_equal(flat(execute(cfg, fed=toy_fed).predictor), flat(execute(cfg, fed=toy_fed).predictor))


def recorded_grads(monkeypatch) -> list[list[torch.Tensor]]:
    """The gradients Adam steps on (after Opacus' or P3SGD's clipping and noise), one list per step."""
    seen, step = [], torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"] if p.grad is not None])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    return seen


@pytest.mark.parametrize("mechanism", ["dp-sgd", "p3sgd"])
def test_site_noise_has_standard_deviation_sigma_times_c_over_the_expected_batch(toy_fed, monkeypatch, mechanism):
    """σ = 50 drowns the clipped signal (at most C per unit): the step's gradient is the noise, σ·C / expected batch."""
    sigma, clip, batch = 50.0, 1.0, 4
    seen = recorded_grads(monkeypatch)
    cfg = RunConfig(
        protocol="single",
        train=TrainSettings(rounds=1, batch_size=batch),
        privacy={"mechanism": mechanism, "noise_multiplier": sigma, "max_grad_norm": clip, "delta": 1e-3},
    )
    execute(cfg, fed=toy_fed)
    site = toy_fed.sites[0].train
    units = site.n_patients if mechanism == "p3sgd" else len(site)
    steps = len(seen)
    expected_batch = units / steps  # q · n with q = 1 / steps (one epoch)
    grads = torch.cat([g.flatten() for step in seen for g in step])
    measured = float(grads.std()) * expected_batch
    assert measured == pytest.approx(sigma * clip, rel=0.1)


def test_dp_fedavg_central_noise_has_standard_deviation_sigma_c_over_n(toy_fed):
    """With a negligible local step, the global update is the coordinator's noise: σ·C / n per coordinate."""
    sigma, clip, n = 2.0, 0.5, len(toy_fed.sites)
    cfg = RunConfig(
        protocol="fedavg",
        train=TrainSettings(rounds=1, batch_size=4, lr=1e-9),
        privacy={"mechanism": "dp-fedavg", "noise_multiplier": sigma, "clipping_norm": clip, "delta": 1e-3},
    )
    result = execute(cfg, fed=toy_fed)
    from privmed.models import build_model

    init = np.concatenate(
        [v.numpy().ravel() for v in build_model("cnn", in_channels=1, n_classes=2, seed=0).state_dict().values()]
    )
    update = flat(result.predictor) - init
    assert float(update.std()) == pytest.approx(sigma * clip / n, rel=0.05)


def test_svt_release_noise_has_the_laplace_scale_of_the_budget():
    """Released values: Δw + Lap(c·2γ/ε₂) with ε₂ = ε/9; here Δw = 0, so their std is √2 · that scale."""
    c, gamma, eps = 1, 100.0, 900.0
    scale = c * 2 * gamma / (eps / 9)
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [dssgd.svt(np.zeros(20), c=c, gamma=gamma, tau=0.0, epsilon=eps, rng=rng)[1] for _ in range(3000)]
    )
    assert len(values) > 1000
    assert float(values.std()) == pytest.approx(np.sqrt(2) * scale, rel=0.1)


def test_svt_threshold_noise_decides_which_coordinates_are_chosen():
    """Deleting the threshold or query noise would make the choice deterministic: |Δw| = 0 vs τ = 0 always passes."""
    rng = np.random.default_rng(1)
    chosen = [len(dssgd.svt(np.zeros(50), c=5, gamma=1.0, tau=0.5, epsilon=1.0, rng=rng)[0]) for _ in range(200)]
    assert 0 < np.mean(chosen) < 5 and len(set(chosen)) > 1


def test_secret_global_numpy_leaves_the_run_seeded_stream_untouched():
    np.random.seed(7)
    expected = np.random.random(3)
    np.random.seed(7)
    with secret_global_numpy():
        inside = np.random.random(3)
    np.testing.assert_array_equal(np.random.random(3), expected)
    assert not np.array_equal(inside, expected)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_noise_comes_from_the_secrets_module_and_nothing_the_coordinator_holds(toy_fed, monkeypatch, name):
    """Pin the OS entropy: two same-seed runs now agree, so no other source (the round seed the coordinator sends,
    the run seed in result.json) drives the noise; the entropy itself never reaches the coordinator's messages."""
    import secrets

    monkeypatch.setattr(secrets, "randbits", lambda bits: 12345)
    a, b = run_twice(toy_fed, name, reproducible=False)
    np.testing.assert_array_equal(flat(a.predictor), flat(b.predictor))
    assert a.privacy["guarantee"] != NOT_PRIVATE
