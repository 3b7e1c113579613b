"""Fault injection in-process: seeded, recorded in result.json, and survived by FedAvg, CWT and the ensembles."""

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from privmed.config import from_dict, replace
from privmed.engine.faults import FaultPlan, corrupted, parse_faults
from privmed.errors import PrivmedError
from privmed.run import execute

BASE = from_dict(
    {"seed": 3, "data": {"sites": 3, "image_size": 16}, "train": {"rounds": 3, "lr": 0.01, "batch_size": 16}}
)


def test_fault_spec_parses_and_refuses_nonsense():
    plan = parse_faults("crash=0.3,straggle=0.2:5s,drop=0.1,corrupt=0.05,deadline=3s")
    assert plan == FaultPlan(crash=0.3, straggle=0.2, straggle_s=5.0, drop=0.1, corrupt=0.05, deadline_s=3.0)
    assert not parse_faults("").active
    for bad in ("crash=2", "explode=0.1", "crash", "straggle=0.1:soon"):
        with pytest.raises(PrivmedError):
            parse_faults(bad)


def test_corruption_puts_nans_in_floats_and_flips_bytes():
    import numpy as np

    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(np.ones(50, np.float32))}), "c": ConfigRecord({"ct": b"\x00" * 8})}
    )
    out = corrupted(content, np.random.default_rng(0))
    assert np.isnan(out["arrays"]["w"].numpy()).any() and out["c"]["ct"] != b"\x00" * 8
    assert not np.isnan(content["arrays"]["w"].numpy()).any()  # the original is untouched


@pytest.mark.parametrize("protocol", ["fedavg", "cwt", "admission"])
def test_protocols_survive_faults_and_report_them(protocol):
    """Crashes, drops, late and corrupted replies: the run completes, every fault is recorded, corruption is caught."""
    config = replace(BASE, protocol=protocol, faults="crash=0.3,straggle=0.3:5s,drop=0.2,corrupt=0.3,deadline=3s")
    result = execute(config)
    rel = result.reliability
    assert rel["completed"] and rel["faults_injected"], rel
    kinds = rel["faults_by_kind"]
    assert sum(kinds.values()) == len(rel["faults_injected"]) == rel["faults_survived"]
    assert kinds["corrupt"] == rel["corrupt_caught"]  # every NaN-corrupted update was rejected, none averaged in
    members = result.predictor if isinstance(result.predictor, list) else [result.predictor]
    assert all(torch.isfinite(t).all() for m in members for t in m.to_torch_state_dict().values())
    # seeded: the same config injects the same faults
    assert execute(config).reliability["faults_injected"] == rel["faults_injected"]


def test_a_round_where_every_site_fails_is_lost_not_fatal():
    result = execute(replace(BASE, protocol="fedavg", faults="crash=1.0"))
    assert result.reliability["rounds_lost"] == [1, 2, 3] and result.reliability["completed"]


def test_fedavg_min_sites_keeps_the_model_when_too_few_replies_arrive():
    """min_sites=3 and sites crashing: exactly the rounds with a crash are lost (not averaged), the others are not."""
    config = replace(BASE, protocol="fedavg", faults="crash=0.4", options={"min_sites": 3})
    rel = execute(config).reliability
    crashed = sorted({e["round"] for e in rel["faults_injected"]})
    assert crashed and crashed != [1, 2, 3]  # this seed has rounds of both kinds
    assert rel["rounds_lost"] == crashed
    with pytest.raises(PrivmedError, match="min_sites=4 is more than the run's 3 sites"):
        execute(replace(BASE, protocol="fedavg", options={"min_sites": 4}))
