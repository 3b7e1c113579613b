"""DP-FedAvg through Flower's DP wrappers: clipping holds, ε at site level matches Opacus."""

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from privmed.config import RunConfig
from privmed.engine.session import plan_of
from privmed.errors import PrivmedError
from privmed.models import build_model
from privmed.privacy.registry import make_mechanism
from privmed.protocols.base import TrainSettings
from privmed.run import execute


def cfg(rounds=1, **opts):
    return RunConfig(
        protocol="fedavg",
        train=TrainSettings(rounds=rounds, batch_size=4, lr=0.05),
        privacy={"mechanism": "dp-fedavg", "delta": 1e-3, **opts},
    )


@pytest.mark.parametrize("side", ["server", "client"])
def test_global_update_is_clipped(toy_fed, side):
    # noise almost off: the averaged update of clipped site updates has norm <= C
    out = execute(cfg(noise_multiplier=1e-4, clipping_norm=0.05, side=side), fed=toy_fed)
    init = build_model("cnn", in_channels=1, n_classes=2, seed=0).state_dict()
    final = out.predictor.to_torch_state_dict()
    norm = np.sqrt(sum(float(((final[k] - init[k]) ** 2).sum()) for k in init))
    assert 0.01 < norm <= 0.05 * 1.01
    assert out.privacy["unit"] == "site"


def test_site_level_epsilon_matches_opacus(toy_fed):
    out = execute(cfg(rounds=3, noise_multiplier=2.0, clipping="adaptive"), fed=toy_fed)
    ref = RDPAccountant()
    ref.history = [(2.0, 1.0, 3)]
    assert out.privacy["epsilon"] == pytest.approx(ref.get_epsilon(delta=1e-3), abs=1e-6)
    assert out.privacy["rounds_accounted"] == 3


def test_needs_fedavg(toy_fed):
    c = RunConfig(protocol="cwt", privacy={"mechanism": "dp-fedavg", "noise_multiplier": 1.0})
    with pytest.raises(PrivmedError, match="protocol fedavg"):
        make_mechanism(c.privacy).check(plan_of(c, toy_fed))
