"""SiteGrid: every deployable protocol gets the in-process schedule on a grid whose node ids are random.

A SuperLink gives SuperNodes random node ids; here an in-process grid with
shuffled, random node ids and the deployment's own ClientApp
(:data:`privmed.engine.deploy.client_app`, partitions assigned out of order)
stands in for it, so every protocol is checked in seconds, without servers
(tests/engine/test_deployment.py runs a few on real SuperNodes).

Tolerance: zero (bit-identical weights) for every protocol but SecAgg+,
whose sites round their updates stochastically before masking (on a real
deployment each SuperNode draws from its own unseeded generator): its weights
agree within one quantisation step's worth, 0.05.
"""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from privmed.config import from_dict, replace
from privmed.engine.deploy import client_app, run_config_of, serve
from privmed.engine.grid import InProcessGrid
from privmed.engine.site_grid import SiteGrid
from privmed.errors import PrivmedError
from privmed.privacy.registry import make_mechanism
from privmed.privacy.sealed import sealed_record
from privmed.protocols.registry import PROTOCOLS
from privmed.run import execute
from tests.engine.conftest import opened, privacy_of

CONFIG = from_dict(
    {"seed": 5, "data": {"sites": 3, "image_size": 16}, "train": {"rounds": 2, "lr": 0.01, "batch_size": 16}}
)
TOLERANCE = {"secagg-fedavg": 0.05}
NODE_IDS = [9876, 123, 5555]  # random-looking, and not in site order
PARTITIONS = [2, 0, 1]


class SuperLinkLike(InProcessGrid):
    """Refuses a reply that does not come from the node the message went to, as the SuperLink does."""

    def _deliver(self, msg, broadcast):
        reply = super()._deliver(msg, broadcast)
        assert reply is None or reply.metadata.src_node_id == msg.metadata.dst_node_id, "reply from another node"
        return reply


def fake_superlink(config, node_ids=NODE_IDS, partitions=PARTITIONS) -> InProcessGrid:
    return SuperLinkLike(
        {n: client_app for n in node_ids},
        run_config=run_config_of(config),
        node_configs={n: {"partition-id": p} for n, p in zip(node_ids, partitions)},
    )


def _members(predictor):
    return [m.to_torch_state_dict() for m in (predictor if isinstance(predictor, list) else [predictor])]


@pytest.mark.parametrize("protocol", sorted(n for n, s in PROTOCOLS.items() if s.deployable))
def test_every_deployable_protocol_runs_the_in_process_schedule(protocol, tmp_path):
    config = replace(CONFIG, protocol=protocol, privacy=privacy_of(protocol, tmp_path))
    deployed = serve(fake_superlink(config), config, wait_nodes_s=5, reply_timeout_s=30)
    local = execute(config)
    assert deployed.reliability["sites"] == ["site-0", "site-1", "site-2"]
    assert not deployed.reliability["rejected_updates"], deployed.reliability
    if make_mechanism(config.privacy).encrypts and protocol != "secagg-fedavg":  # the coordinator holds it sealed
        assert sealed_record(deployed.predictor) is not None
        deployed.predictor = opened(config, deployed.predictor)
    got, ref = _members(deployed.predictor), _members(local.predictor)
    assert len(got) == len(ref)
    diff = max(float((a[k] - b[k]).abs().max()) for a, b in zip(got, ref) for k in a)
    assert diff <= TOLERANCE.get(protocol, 0.0), diff
    if protocol not in TOLERANCE:
        history = zip(local.performance["history"], deployed.performance["history"])
        assert deployed.performance["history"] == [{**h, "seconds": d["seconds"]} for h, d in history]


@pytest.mark.parametrize("protocol", sorted(n for n, s in PROTOCOLS.items() if not s.deployable))
def test_a_protocol_that_cannot_deploy_is_refused_with_its_reason(protocol):
    with pytest.raises(PrivmedError, match=f"protocol {protocol} does not run on a Flower deployment: .+"):
        run_config_of(replace(CONFIG, protocol=protocol))


def test_fault_injection_is_refused_on_a_deployment():
    with pytest.raises(PrivmedError, match="in-process only"):
        run_config_of(replace(CONFIG, faults="crash=0.1"))


def test_two_supernodes_claiming_one_site_are_refused():
    """The issue's duplicate partition-ids {0, 0, 1}: site 0 counted twice, site 2 never trained, completed: true."""
    grid = fake_superlink(CONFIG, partitions=[0, 0, 1])
    with pytest.raises(PrivmedError, match="claim site 'site-0'"):
        SiteGrid(grid).join(3, wait_s=1)


def test_a_run_that_names_its_sites_takes_only_those_of_a_superlink_serving_more():
    grid = fake_superlink(CONFIG, node_ids=[7, 8, 9], partitions=[0, 1, 2])
    assert SiteGrid(grid).join(2, wait_s=1, names=["site-2", "site-0"]) == ["site-0", "site-2"]
    with pytest.raises(PrivmedError, match=r"only 1 of 2 sites joined within 1 s \(site-1; not online: site-7\)"):
        SiteGrid(grid).join(2, wait_s=1, names=["site-1", "site-7"])


def test_join_names_the_missing_sites_after_its_deadline():
    grid = fake_superlink(CONFIG, node_ids=[7], partitions=[1])
    with pytest.raises(PrivmedError, match=r"only 1 of 3 sites joined within 1 s \(site-1\)"):
        SiteGrid(grid).join(3, wait_s=1)


class Flaky(InProcessGrid):
    """An in-process grid whose online set can change, as a SuperLink's does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.down: set[int] = set()

    def get_node_ids(self):
        return [n for n in super().get_node_ids() if n not in self.down]


def test_an_offline_site_answers_at_once_with_an_error_and_a_restarted_one_rejoins():
    config = replace(CONFIG, protocol="cwt")
    apps = {n: client_app for n in (11, 12, 13)}
    grid = Flaky(apps, run_config=run_config_of(config), node_configs={n: {"partition-id": n - 11} for n in apps})
    sites = SiteGrid(grid, reply_timeout_s=5)
    assert sites.join(3, wait_s=1) == ["site-0", "site-1", "site-2"]
    grid.down.add(12)  # site-1's SuperNode dies
    (reply,) = sites.send_and_receive([Message(RecordDict({"config": ConfigRecord({})}), 3, "evaluate", group_id="1")])
    assert reply.has_error() and "site-1 is offline" in reply.error.reason and reply.metadata.src_node_id == 3
    assert list(sites.get_node_ids()) == [2, 3, 4]  # the run's sites stay listed: FedAvg's sampling never blocks
    # it restarts as a new Flower node (new id, same name) and is addressed again under its site's node id
    grid._apps[14], grid._contexts[14] = client_app, grid._contexts[12]
    grid.site_seconds[14] = 0.0
    sites.refresh()
    assert sites.node_of["site-1"] == 14
    assert [e["event"] for e in sites.events] == ["offline", "rejoined"]


class CoordinatorKilled(Exception):
    pass


def kill_coordinator_in_round_3(config, checkpoint_dir) -> None:
    """Run ``config`` on the stand-in SuperLink, checkpointing, until the ServerApp dies as round 3 starts."""

    def die_in_round_3(msg, reply):
        if msg.metadata.group_id == "3":
            raise CoordinatorKilled
        return reply

    grid = fake_superlink(config)
    grid.fault = die_in_round_3
    with pytest.raises(CoordinatorKilled):
        serve(grid, config, wait_nodes_s=5, reply_timeout_s=30, checkpoint_dir=checkpoint_dir)


def test_a_killed_coordinator_resumes_from_its_last_round_and_loses_at_most_the_round_in_progress(tmp_path):
    """The ServerApp dies in round 3 of 3; resumed, it ends where an uninterrupted run ends."""
    config = replace(CONFIG, protocol="cwt", **{"train.rounds": 3})
    whole = serve(fake_superlink(config), config, wait_nodes_s=5, reply_timeout_s=30)
    kill_coordinator_in_round_3(config, tmp_path)
    resumed = serve(fake_superlink(config), config, wait_nodes_s=5, reply_timeout_s=30, checkpoint_dir=tmp_path,
                    resume=True)  # fmt: skip
    assert resumed.reliability["resumed_from_round"] == 2
    assert [h["round"] for h in resumed.performance["history"]] == [1, 2, 3]
    # rounds 1-2 come back from the checkpoint exactly; round 3 runs again from the checkpointed model, but the
    # sites' optimiser state restarts with the resumed run (Flower's node state is per run), so it differs a little
    assert resumed.performance["history"][:2] == [
        {**h, "seconds": r["seconds"]} for h, r in zip(whole.performance["history"][:2], resumed.performance["history"])
    ]
    assert resumed.performance["history"][2]["val"]["loss"] == pytest.approx(
        whole.performance["history"][2]["val"]["loss"], rel=0.2
    )


@pytest.mark.parametrize("protocol", ["he-fedavg", "snt"])
def test_an_encrypting_protocols_killed_coordinator_resumes_from_its_sealed_checkpoint_or_says_why_not(
    tmp_path, protocol
):
    """On the deployment's code path the coordinator, which holds no key, checkpoints the sealed model; killed in round
    3 of 3 and resumed (`privmed run --resume`), HE-FedAvg continues from round 2's encrypted sum, which the sites
    decrypt; SNT's blob is bound to the killed run's Flower run id, so its resume is refused with that reason."""
    import torch
    from flwr.app import ArrayRecord

    config = replace(CONFIG, protocol=protocol, privacy=privacy_of(protocol, tmp_path), **{"train.rounds": 3})
    kill_coordinator_in_round_3(config, tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["round"] == 2 and sealed_record(ArrayRecord(saved["members"][0])) is not None  # no plaintext
    resume = dict(wait_nodes_s=5, reply_timeout_s=30, checkpoint_dir=tmp_path / "run", resume=True)
    if protocol == "snt":
        with pytest.raises(PrivmedError, match="SNT cannot resume on a deployment: .* bound to the killed run's"):
            serve(fake_superlink(config), config, **resume)
        return
    resumed = serve(fake_superlink(config), config, **resume)
    assert resumed.reliability["resumed_from_round"] == 2 and resumed.reliability["completed"]
    assert [h["round"] for h in resumed.performance["history"]] == [1, 2, 3]
    assert not resumed.reliability["rejected_updates"], resumed.reliability  # every site trained in round 3
    assert sealed_record(resumed.predictor) is not None
    opened(config, resumed.predictor)  # the sites' key opens the resumed run's model
