"""`privmed audit`: which attacks apply, audit.json written whole or not at all, clear errors."""

import json

import pytest

from privmed.audit import audit_run, hides_updates, load_target, not_applicable, run_attacks
from privmed.config import DataConfig, RunConfig
from privmed.errors import PrivmedError
from privmed.protocols.base import TrainSettings
from privmed.run import run


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory):
    cfg = RunConfig(protocol="fedavg", name="fa", data=DataConfig(image_size=16), train=TrainSettings(rounds=2))
    _, path = run(cfg, runs_dir=tmp_path_factory.mktemp("runs"))
    return path.parent


def test_applicability_follows_protocol_mechanism_and_task():
    plain = {"mechanism": "none"}
    assert not_applicable("inversion", protocol="fedavg", task="classification", privacy=plain) is None
    assert "raw images" in not_applicable("inversion", protocol="centralised", task="classification", privacy=plain)
    assert "sends nothing" in not_applicable("dlg", protocol="single", task="classification", privacy=plain)
    assert "classifiers" in not_applicable("membership", protocol="fedavg", task="segmentation", privacy=plain)
    assert not_applicable("linkage", protocol="fedavg", task="segmentation", privacy=plain) is None
    assert "no patient metadata" in not_applicable(
        "linkage", protocol="fedavg", task="classification", privacy=plain, has_metadata=False
    )
    assert "shadow" in not_applicable(
        "lira", protocol="fedavg", task="classification", privacy=plain, dataset="medmnist:x.npz"
    )
    assert hides_updates({"mechanism": "secagg+"}) and hides_updates({"mechanism": "he-ckks"})
    assert hides_updates({"mechanism": "x", "individual_updates_visible": False})
    assert not hides_updates({"mechanism": "dp-sgd"}) and not hides_updates({})


def test_audit_writes_audit_json_with_the_attacks_numbers(fedavg_run):
    audit, path = audit_run(fedavg_run, attacks=("membership", "linkage"))
    saved = json.loads(path.read_text())
    assert saved["protocol"] == "fedavg" and set(saved["results"]) == {"membership", "linkage"}
    assert 0 <= saved["results"]["membership"]["image"]["auc"] <= 1
    assert saved["results"]["linkage"]["pseudonymised"]["reidentified"] > 0.9
    assert set(audit.leakage()) == {
        "MIA AUC",
        "MIA AUC (patient)",
        "re-identified (pseudonymised)",
        "re-identified (5-anonymous)",
    }


def test_inversion_and_adversarial_against_the_saved_model_are_reproducible(fedavg_run):
    target, result = load_target(fedavg_run)
    kw = dict(attacks=("inversion", "adversarial"), batch_sizes=(1,), inversion_iterations=20)
    a, b = run_attacks(target, result, **kw), run_attacks(target, result, **kw)
    assert (
        a.results["inversion"]["per_batch_size"]["1"]["psnr"] == b.results["inversion"]["per_batch_size"]["1"]["psnr"]
    )
    assert a.results["inversion"]["observed"] == "one site's update"
    assert a.results["adversarial"]["pgd"] == b.results["adversarial"]["pgd"]


def test_bad_run_dirs_and_inapplicable_attacks_leave_no_audit_json(fedavg_run, tmp_path, monkeypatch):
    with pytest.raises(PrivmedError, match="does not exist"):
        audit_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "result.json").write_text("{}")
    with pytest.raises(PrivmedError, match="incomplete: no model.pt"):
        audit_run(tmp_path / "half")
    with pytest.raises(PrivmedError, match="unknown attack"):
        audit_run(fedavg_run, attacks=("telepathy",))
    (fedavg_run / "audit.json").unlink(missing_ok=True)
    from privmed.attacks import harness

    monkeypatch.setattr(harness, "measure_linkage", lambda t: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        audit_run(fedavg_run, attacks=("membership", "linkage"))
    assert not (fedavg_run / "audit.json").exists() and not (fedavg_run / "audit.json.tmp").exists()


def test_single_site_run_refuses_inversion(tmp_path):
    cfg = RunConfig(protocol="single", name="one", data=DataConfig(image_size=16), train=TrainSettings(rounds=1))
    _, path = run(cfg, runs_dir=tmp_path)
    with pytest.raises(PrivmedError, match="does not apply to run one: one site trains alone"):
        audit_run(path.parent, attacks=("inversion",))
    assert not (path.parent / "audit.json").exists()


def test_inversion_of_a_dssgd_run_sees_only_the_uploaded_fraction(tmp_path):
    cfg = RunConfig(
        protocol="dssgd",
        name="d",
        options={"theta_u": 0.1},
        data=DataConfig(image_size=16),
        train=TrainSettings(rounds=1),
    )
    _, path = run(cfg, runs_dir=tmp_path)
    target, result = load_target(path.parent)
    inv = run_attacks(target, result, attacks=("inversion",), batch_sizes=(1,), inversion_iterations=10).results[
        "inversion"
    ]
    assert inv["observed"] == "one site's DSSGD upload (10.0% of the update)"
    assert inv["per_batch_size"]["1"]["psnr"] > 0
