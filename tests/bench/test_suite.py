"""`privmed bench` keeps what it finished: a failed audit keeps its row, an interrupted suite resumes."""

import json

import pytest

import privmed.audit
import privmed.run
from privmed.bench.suite import run_suite
from privmed.config import DataConfig, RunConfig
from privmed.errors import PrivmedError
from privmed.protocols.base import TrainSettings

TINY = RunConfig(data=DataConfig(image_size=16), train=TrainSettings(rounds=1))
ROWS = [
    ("centralised", RunConfig(**{**TINY.__dict__, "protocol": "centralised", "name": "a"})),
    ("fedavg", RunConfig(**{**TINY.__dict__, "protocol": "fedavg", "name": "b"})),
]
MIA = ("membership",)  # a cheap audit where the test is about the suite, not the attacks


def test_a_failed_audit_keeps_its_row_with_the_error(tmp_path, monkeypatch):
    real = privmed.audit.bench_audit

    def audit(cfg, fed, result, attacks):
        if cfg.protocol == "fedavg":
            raise PrivmedError("probe exploded")
        return real(cfg, fed, result, attacks)

    monkeypatch.setattr(privmed.audit, "bench_audit", audit)
    bigger = RunConfig(
        protocol="fedavg",
        name="c",
        data=DataConfig(image_size=16, patients_scale=2),
        train=TrainSettings(rounds=1),
        privacy={"mechanism": "dp-sgd", "noise_multiplier": 1.0},
    )
    out = run_suite(runs_dir=tmp_path, rows=[*ROWS, ("fedavg dp", bigger)])
    results = {r["label"]: r for r in json.loads((out / "results.json").read_text())}
    assert results["fedavg"]["privacy"]["audit_error"] == "probe exploded"
    assert "leakage" in results["centralised"]["privacy"] and (out / "a" / "audit.json").exists()
    assert not (out / "b" / "audit.json").exists()
    report = (out / "details.md").read_text()  # the details behind report.md's summary
    assert "audit failed (probe exploded)" in report
    # the DP row is on other data: two distribution tables, and no wall ratio against FedAvg on the smaller data
    assert "430 patients: 2 rows" in report and "580 patients: 1 row" in report  # v2: + 4 x 70 held-out
    dp_line = next(line for line in report.splitlines() if line.startswith("| fedavg dp (`"))  # its detail row
    assert "580 patients" in dp_line and "FedAvg wall" not in dp_line


def test_an_interrupted_bench_resumes_without_rerunning_finished_rows(tmp_path, monkeypatch):
    real, calls = privmed.run.execute, []

    def interrupted(cfg, **kw):
        if "progress" in kw:  # the suite's own runs, not the audits' ones
            calls.append(cfg.name)
        if cfg.name == "b":
            raise KeyboardInterrupt
        return real(cfg, **kw)

    monkeypatch.setattr(privmed.run, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_suite(runs_dir=tmp_path, rows=ROWS, attacks=MIA)
    assert (tmp_path / ".bench.partial" / "a" / "result.json").exists() and not (tmp_path / "bench").exists()

    def counted(cfg, **kw):
        if "progress" in kw:
            calls.append(cfg.name)
        return real(cfg, **kw)

    monkeypatch.setattr(privmed.run, "execute", counted)
    changed = [ROWS[0], ("fedavg", RunConfig(**{**ROWS[1][1].__dict__, "seed": 1}))]
    out = run_suite(runs_dir=tmp_path, rows=changed, resume=True, attacks=MIA)
    assert calls == ["a", "b", "b"]  # row a was kept, not run again; b ran with its new config
    assert [r["label"] for r in json.loads((out / "results.json").read_text())] == ["centralised", "fedavg"]
    # a kept row whose config changed is run again
    out = run_suite(
        runs_dir=tmp_path,
        rows=[(ROWS[0][0], RunConfig(**{**ROWS[0][1].__dict__, "seed": 2}))],
        resume=True,
        attacks=MIA,
    )
    assert calls[-1] == "a"


def test_the_privacy_sweep_audits_leakage_only(tmp_path):
    from privmed.bench.suite import suite_attacks

    out = run_suite(runs_dir=tmp_path, rows=ROWS[:1], attacks=suite_attacks("privacy"))
    (r,) = json.loads((out / "results.json").read_text())
    # inversion does not apply to centralised; the MIA figure comes with its null
    assert set(r["privacy"]["leakage"]) == {"MIA AUC", "MIA AUC (patient)", "MIA AUC, null (chance)"}
    assert not r["security"]["attacks"] and suite_attacks("default") is None


def test_rows_run_in_parallel_give_the_same_numbers(tmp_path):
    attacks = ("membership", "inversion")  # two seeded attacks show the audit is reproducible across processes
    serial = json.loads((run_suite(runs_dir=tmp_path / "s", rows=ROWS, attacks=attacks) / "results.json").read_text())
    parallel = run_suite(runs_dir=tmp_path / "p", rows=ROWS, jobs=2, attacks=attacks)
    parallel = json.loads((parallel / "results.json").read_text())
    assert [r["label"] for r in parallel] == [r["label"] for r in serial]
    for a, b in zip(serial, parallel):
        assert a["performance"]["final"] == b["performance"]["final"]
        assert a["privacy"]["leakage"] == b["privacy"]["leakage"]


def test_every_row_runs_over_seeds_and_the_report_gives_mean_ci_and_paired_differences(tmp_path):
    out = run_suite(runs_dir=tmp_path, rows=ROWS, seeds=2, attacks=("membership",))
    results = json.loads((out / "results.json").read_text())
    assert [(r["label"], r["seed"]) for r in results] == [
        ("centralised", 0),
        ("centralised", 1),
        ("fedavg", 0),
        ("fedavg", 1),
    ]
    summary = json.loads((out / "summary.json").read_text())
    auroc = {r["label"]: r["figures"]["test AUROC"] for r in summary["rows"]}
    values = [r["performance"]["final"]["auroc"] for r in results if r["label"] == "fedavg"]
    assert auroc["fedavg"]["n"] == 2 and auroc["fedavg"]["mean"] == pytest.approx(sum(values) / 2)
    assert auroc["fedavg"]["ci95"] > 0 or values[0] == values[1]
    (fedavg_vs_central,) = [
        c for c in summary["comparisons"] if c["row"] == "fedavg" and c["reference"] == "centralised"
    ]
    assert fedavg_vs_central["pairs"] == 2 and "significant" in fedavg_vs_central
    report = (out / "report.md").read_text()
    assert "mean ± 95 % CI over 2 seed(s)" in report and "paired over seeds" in report


def test_the_review_budget_runs_the_sweep_and_the_backdoor_on_the_first_seeds_only(tmp_path):
    from privmed.bench.crossover import PREFIX

    sweep = ("crossover point", RunConfig(**{**ROWS[1][1].__dict__, "name": f"{PREFIX}c"}))
    out = run_suite(
        runs_dir=tmp_path,
        rows=[ROWS[1], sweep],
        seeds=3,
        attacks=("membership", "poisoning"),
        crossover_seeds=2,
        poisoning_seeds=1,
    )
    results = json.loads((out / "results.json").read_text())
    assert [(r["label"], r["seed"]) for r in results] == [
        *[("fedavg", s) for s in range(3)],
        *[("crossover point", s) for s in range(2)],
    ]
    attacked = {r["seed"]: json.loads((out / f"b-s{r['seed']}" / "audit.json").read_text()) for r in results[:3]}
    assert "poisoning" in attacked[0]["results"] and all("poisoning" not in attacked[s]["results"] for s in (1, 2))
    assert all("membership" in a["results"] for a in attacked.values())
    assert not any((out / f"{PREFIX}c-s{s}" / "audit.json").exists() for s in range(2))  # the sweep is not audited


def test_parallel_workers_get_the_longest_rows_first():
    """Longest first, so the short crossover runs fill the tail; the review's 10x-patient DP rows and the U-Net
    segmentation rows before its default rows."""
    from privmed.bench.suite import _expected_cost, review_suite

    rows = {cfg.run_name: cfg for _, cfg in review_suite()}
    cost = {name: _expected_cost(cfg) for name, cfg in rows.items()}
    crossover = max(c for n, c in cost.items() if n.startswith("crossover"))
    assert crossover < min(cost[n] for n in ("centralised", "single-site3", "cwt", "fedavg-faults"))
    assert cost["cwt"] < cost["fedavg-unet-seg"] < cost["centralised-p3sgd-eps3"]
    assert cost["centralised"] < cost["centralised-x10"]
