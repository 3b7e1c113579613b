"""The bench's Reliability column: measured fault figures, and the accuracy change against the fault-free row."""

from privmed.bench.report import write_report
from privmed.bench.suite import BENCH_FAULTS, review_suite
from privmed.config import from_dict, replace
from privmed.run import execute

BASE = from_dict(
    {"seed": 4, "data": {"sites": 3, "image_size": 16}, "train": {"rounds": 2, "lr": 0.01, "batch_size": 16}}
)


def test_the_review_suite_has_fault_rows_for_fedavg_cwt_and_the_admission_ensemble():
    faulted = {cfg.protocol for _, cfg in review_suite(rounds=1) if cfg.faults}
    assert faulted == {"fedavg", "cwt", "admission"}


def test_a_faulted_row_reports_its_faults_and_its_change_against_the_fault_free_row(tmp_path):
    rows = []
    for faults in ("", BENCH_FAULTS.replace("crash=0.2", "crash=0.5")):
        result = execute(replace(BASE, faults=faults, name=f"f{bool(faults)}"))
        rows.append({**result.to_dict(), "label": "fedavg" + (" + faults" if faults else "")})
    write_report(rows, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    faulted = next(line for line in text.splitlines() if line.startswith("| fedavg + faults"))
    assert "faults injected (crash" in faulted and "survived" in faulted and "rounds lost" in faulted
    assert "against the fault-free run (this seed; over seeds: the Summary)" in faulted
    plain = next(line for line in text.splitlines() if line.startswith("| fedavg (`"))
    assert "no faults injected" in plain


def _fake(label, seed, faults, accuracy, injected):
    config = {"protocol": "fedavg", "seed": seed, "name": label, "faults": faults, "data": {"sites": 3}}
    return {
        "label": label,
        "seed": seed,
        "technique": "t",
        "config": config,
        "performance": {"metric": "accuracy", "final": {"accuracy": accuracy}},
        "reliability": {"faults_injected": [{}] * injected, "faults_survived": injected, "rounds_lost": [1] * seed},
    }


def test_the_summary_pairs_each_faulted_row_with_its_fault_free_row_over_seeds():
    from privmed.bench.stats import fault_effects

    results = [
        *(_fake("fedavg", s, "", a, 0) for s, a in ((0, 0.80), (1, 0.70), (2, 0.75))),
        *(_fake("fedavg + faults", s, "crash=0.5", a, n) for s, a, n in ((0, 0.70, 2), (1, 0.66, 4), (2, 0.69, 3))),
    ]
    (effect,) = fault_effects(results)
    assert effect["row"] == "fedavg + faults" and effect["fault_free"] == "fedavg"
    assert effect["faults injected"]["mean"] == 3.0 and effect["faults injected"]["ci95"] > 0
    assert effect["rounds lost"]["mean"] == 1.0
    change = effect["change"]
    assert change["pairs"] == 3 and abs(change["mean"] - (-0.2 / 3)) < 1e-12 and change["ci95"] > 0
