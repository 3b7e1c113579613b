"""Site policies: each refusal names its rule, and the coordinator reports it as the site's rejected updates."""

import re

import pytest

from privmed.config import from_dict, replace
from privmed.engine.deploy import client_app, run_config_of, serve
from privmed.engine.grid import InProcessGrid
from privmed.engine.policy import SitePolicy, load_policy, policy_problem, site_privacy
from privmed.errors import PrivmedError

CONFIG = from_dict(
    {"seed": 2, "data": {"sites": 3, "image_size": 16}, "train": {"rounds": 1, "lr": 0.01, "batch_size": 16}}
)


def _problem(policy, protocol="fedavg", mechanism="none", dp=False, epsilon=None):
    return policy_problem(policy, site="site-1", protocol=protocol, mechanism=mechanism, dp=dp, epsilon=epsilon)


@pytest.mark.parametrize(
    ("policy", "run", "reason"),
    [
        (SitePolicy(protocols=["fedavg"]), {"protocol": "cwt"}, "protocol cwt is not allowed by its policy"),
        (SitePolicy(mechanisms=["dp-sgd"]), {}, "privacy mechanism none is not allowed"),
        (SitePolicy(require_dp=True), {}, "requires differential privacy"),
        (SitePolicy(max_epsilon=1.0), {"dp": True, "epsilon": 3.0}, "target ε 3 per patient exceeds .* maximum 1"),
        (SitePolicy(max_epsilon=1.0), {"dp": True}, "states no target ε"),
    ],
)
def test_each_rule_refuses_with_its_reason(policy, run, reason):
    got = _problem(policy, **run)
    assert got and got.startswith("site-1 refuses: ")
    assert re.search(reason, got), got


def test_a_run_within_the_policy_passes():
    policy = SitePolicy(protocols=["fedavg"], mechanisms=["dp-sgd"], require_dp=True, max_epsilon=3.0)
    assert _problem(policy, mechanism="dp-sgd", dp=True, epsilon=3.0) is None


def test_the_sites_own_ledger_and_limit_replace_the_coordinators():
    policy = SitePolicy(max_epsilon=2.0, ledger="sqlite:///site.db", ledger_key="site.key")
    asked = {"mechanism": "dp-sgd", "epsilon": 1.0, "ledger": "sqlite:///coordinator.db", "budget": 50.0}
    got = site_privacy(policy, asked, dp=True)
    assert got == {"mechanism": "dp-sgd", "epsilon": 1.0, "ledger": "sqlite:///site.db", "ledger_key": "site.key",
                   "budget": 2.0}  # fmt: skip
    assert site_privacy(policy, {"mechanism": "none"}, dp=False) == {"mechanism": "none"}


def test_policy_files_are_strict(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('protocols = ["fedavg"]\nmax_epsilon = 3\n')
    assert load_policy(path) == SitePolicy(protocols=["fedavg"], max_epsilon=3.0)
    path.write_text("max_epsilon = -1\n")
    with pytest.raises(PrivmedError, match="max_epsilon must be > 0"):
        load_policy(path)
    path.write_text("allow_everything = true\n")
    with pytest.raises(PrivmedError, match="unknown option 'allow_everything'"):
        load_policy(path)


def test_the_coordinator_reports_a_sites_refusal_and_runs_with_the_others(tmp_path):
    """site-1's policy allows FedAvg only; a CWT run skips it at every visit and says why."""
    policy = tmp_path / "site-1.toml"
    policy.write_text('protocols = ["fedavg"]\n')
    config = replace(CONFIG, protocol="cwt")
    nodes = {41: 0, 42: 1, 43: 2}
    grid = InProcessGrid(
        {n: client_app for n in nodes},
        run_config=run_config_of(config),
        node_configs={n: {"partition-id": k, **({"policy": str(policy)} if k == 1 else {})} for n, k in nodes.items()},
    )
    result = serve(grid, config, wait_nodes_s=5, reply_timeout_s=30)
    (rejected,) = result.reliability["rejected_updates"]
    assert rejected["node"] == 3  # site-1
    assert "site-1 refuses: protocol cwt is not allowed by its policy (allowed: fedavg)" in rejected["reason"]
