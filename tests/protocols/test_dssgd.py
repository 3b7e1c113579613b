"""DSSGD (Shokri & Shmatikov 2015): the selection rules, what travels, and the protocol end to end."""

import numpy as np
import pytest

from privmed.config import RunConfig
from privmed.errors import PrivmedError
from privmed.protocols.base import TrainSettings
from privmed.protocols.dssgd import DSSGDOptions, select, svt
from privmed.run import execute
from tests.privacy.conftest import make_fed


def test_largest_selection_takes_top_theta_u_truncated():
    d = np.array([0.5, -3.0, 0.1, 2.0, -0.2, 0.0, 1.0, 0.05, -0.7, 0.3])
    idx, val = select(d, DSSGDOptions(theta_u=0.3, gamma=1.5), np.random.default_rng(0))
    assert idx.tolist() == [1, 3, 6]
    assert val.tolist() == [-1.5, 1.5, 1.0]


def test_random_selection_only_above_tau():
    d = np.linspace(-1, 1, 101)
    idx, _ = select(d, DSSGDOptions(theta_u=0.1, selection="random", tau=0.8), np.random.default_rng(1))
    assert len(idx) == 11 and np.all(np.abs(d[idx]) >= 0.8)


def test_svt_releases_at_most_c_truncated_values():
    d = np.random.default_rng(0).normal(size=500)
    idx, val = svt(d, c=10, gamma=0.5, tau=0.0, epsilon=1.0, rng=np.random.default_rng(2))
    assert len(idx) <= 10 and len(set(idx.tolist())) == len(idx)
    assert np.all(np.abs(val) <= 0.5)


def test_protocol_uploads_only_theta_u_and_learns():
    fed = make_fed(n_sites=2, patients=6)
    base = RunConfig(protocol="dssgd", train=TrainSettings(rounds=4, batch_size=4, lr=0.01))
    full = execute(RunConfig(**{**base.__dict__, "options": {"theta_u": 1.0}}), fed=fed)
    tenth = execute(RunConfig(**{**base.__dict__, "options": {"theta_u": 0.1}}), fed=fed)
    assert tenth.communication["bytes_up"] < 0.15 * full.communication["bytes_up"]
    assert full.performance["final"]["accuracy"] > 0.6
    assert tenth.privacy["shared_fraction_up"] == 0.1 and not tenth.reliability["rejected_updates"]
    dp = execute(RunConfig(**{**base.__dict__, "options": {"theta_u": 0.1, "gamma": 0.01, "dp_epsilon": 2.0}}), fed=fed)
    from privmed.privacy.accounting import epsilon_from_rdp, rdp_pure

    # four uploads per site (4 rounds): the better of basic composition (8.0) and RDP composition
    expected = min(4 * 2.0, epsilon_from_rdp(rdp_pure(epsilon=2.0, releases=4), delta=dp.privacy["delta"]))
    assert dp.privacy["unit"] == "site" and dp.privacy["epsilon"] == pytest.approx(expected)


def test_participants_keep_their_own_models_which_the_evaluator_reads_at_the_sites():
    """Shokri & Shmatikov score each participant's local model; the coordinator's result is unchanged by watching."""
    from privmed.protocols.dssgd import watch_local_models

    fed = make_fed(n_sites=3, patients=6)
    cfg = RunConfig(protocol="dssgd", options={"theta_u": 0.1}, train=TrainSettings(rounds=1, batch_size=4, lr=0.01))
    unwatched = execute(cfg, fed=fed)
    with watch_local_models() as local:
        watched = execute(cfg, fed=fed)
    assert sorted(local) == [0, 1, 2]
    glob = np.concatenate([a.numpy().ravel() for a in watched.predictor.values()])
    own = [np.concatenate([a.numpy().ravel() for a in local[i].values()]) for i in range(3)]
    assert all(not np.allclose(o, glob) for o in own)  # each site trained past what it shared (θu = 0.1)
    assert not np.allclose(own[0], own[1])
    assert np.array_equal(glob, np.concatenate([a.numpy().ravel() for a in unwatched.predictor.values()]))


@pytest.mark.parametrize("opts", [{"theta_u": 0}, {"theta_u": 0.1, "selection": "best"}, {"dp_epsilon": 1.0}])
def test_bad_options(opts):
    with pytest.raises(PrivmedError):
        DSSGDOptions(**opts)
