"""`privmed audit`: which attacks apply, audit.json written whole or not at all, clear errors."""

import json

import pytest

from privmed.audit import audit_run, load_target, not_applicable, run_attacks
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
    assert "one site trains alone" in not_applicable("dlg", protocol="single", task="classification", privacy=plain)
    assert "classifiers" in not_applicable("membership", protocol="fedavg", task="segmentation", privacy=plain)
    assert not_applicable("linkage", protocol="fedavg", task="segmentation", privacy=plain) is None
    assert "no patient metadata" in not_applicable(
        "linkage", protocol="fedavg", task="classification", privacy=plain, has_metadata=False
    )
    assert (
        not_applicable("lira", protocol="fedavg", task="classification", privacy=plain, dataset="medmnist:x.npz")
        is None
    )


def test_audit_writes_audit_json_with_the_attacks_numbers(fedavg_run):
    audit, path = audit_run(fedavg_run, attacks=("membership", "linkage"))
    saved = json.loads(path.read_text())
    assert saved["protocol"] == "fedavg" and set(saved["results"]) == {"membership", "linkage"}
    link = saved["results"]["linkage"]
    # positive control (exact register of every patient) > realistic register (half the population, noisy) > null
    assert link["positive_control"]["reidentified"] > 0.9
    assert link["positive_control"]["reidentified"] > link["pseudonymised"]["reidentified"] > link["null_random_guess"]
    assert link["pseudonymised"]["prosecutor_risk_avg"] > link["5-anonymous"]["prosecutor_risk_avg"]
    assert set(audit.leakage()) == {
        "MIA AUC",
        "MIA AUC (patient)",
        "MIA AUC, null (chance)",
        "re-identified (pseudonymised)",
        "re-identified (5-anonymous)",
        "re-identified, positive control (exact full register)",
        "re-identified, null (random guess)",
    }


def test_inversion_and_adversarial_against_the_saved_model_are_reproducible(fedavg_run):
    target, result = load_target(fedavg_run)
    kw = dict(attacks=("inversion", "adversarial"), batch_sizes=(1,), inversion_iterations=20)
    a, b = run_attacks(target, result, **kw), run_attacks(target, result, **kw)
    coordinator, site = (a.results["inversion"]["per_party"][p] for p in ("coordinator", "another site"))
    assert (
        coordinator["per_batch_size"]["1"]["psnr"]
        == (b.results["inversion"]["per_party"]["coordinator"]["per_batch_size"]["1"]["psnr"])
    )
    assert coordinator["view"] == "update" and site["view"] == "aggregate"  # FedAvg: each site sees the global model
    assert "1" in coordinator["per_batch_size"] and "4" in site["per_batch_size"]  # the aggregate: 4 sites x 1 image
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
    with pytest.raises(PrivmedError, match="does not apply to run one: no party sees an update"):
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
    coordinator = inv["per_party"]["coordinator"]
    assert coordinator["view"] == "partial update" and coordinator["uploaded_fraction"] == pytest.approx(0.1, abs=1e-3)
    site = inv["per_party"]["another site"]
    assert site["per_batch_size"] == coordinator["per_batch_size"]  # the same kind of view: one probe serves both


@pytest.mark.parametrize(
    ("protocol", "privacy"), [("snt", {"mechanism": "aes-gcm"}), ("he-fedavg", {"mechanism": "he-ckks"})]
)
def test_inversion_attacks_the_view_each_party_actually_has(tmp_path, protocol, privacy):
    """SNT/HE: the coordinator holds ciphertext (not applicable, shown why); the sites decrypt and are attacked."""
    cfg = RunConfig(
        protocol=protocol, name="e", privacy=privacy, data=DataConfig(image_size=16), train=TrainSettings(rounds=1)
    )
    _, path = run(cfg, runs_dir=tmp_path)
    target, result = load_target(path.parent)
    audit = run_attacks(target, result, attacks=("inversion",), batch_sizes=(1,), inversion_iterations=5)
    parties = audit.results["inversion"]["per_party"]
    assert (
        "ciphertext" in parties["coordinator"]["not_applicable"]
        and "ciphertext" in parties["eavesdropper"]["not_applicable"]
    )
    assert parties["another site"]["view"] == ("update" if protocol == "snt" else "aggregate")
    assert set(audit.leakage()) == {
        "inversion PSNR dB",
        "inversion PSNR dB, another site",
        "inversion PSNR dB, null (flat guess)",
        "inversion PSNR dB, null (random image)",
        "inversion PSNR dB, positive control",
    }
    assert audit.threat["coordinator"]["kind"] == "ciphertext" and audit.threat["active coordinator"]["survives"]


def test_an_empty_attack_list_runs_nothing(fedavg_run):
    # bench_audit passes () when no bench attack applies (a segmentation row): nothing runs, nothing fails
    target, result = load_target(fedavg_run)
    audit = run_attacks(target, result, attacks=())
    assert audit.results == {} and audit.not_applicable == {}
