"""The privacy–utility table and plot are computed from result dicts: ε series per protocol and DP unit, ∞ = no DP."""

import dataclasses
import math

from privmed.bench.privacy import curves, dp_rows, dssgd_points, privacy_section, privacy_suite, write_epsilon_plot
from privmed.config import RunConfig
from privmed.protocols.base import TrainSettings
from privmed.run import execute
from tests.privacy.conftest import make_fed


def test_privacy_utility_from_results(tmp_path):
    fed = make_fed(n_sites=2)
    base = RunConfig(train=TrainSettings(rounds=1, batch_size=4))
    rows = [r for r in privacy_suite(base) if r[1].protocol in ("centralised", "dssgd") and r[1].privacy.get("epsilon", 3.0) in (3.0, 8.0)]
    rows = [r for r in rows if r[1].privacy.get("mechanism") != "p3sgd" or r[1].privacy["epsilon"] == 3.0]
    results = [{"label": label, **execute(cfg, fed=fed).to_dict()} for label, cfg in rows]
    series = curves(results)
    assert set(series) == {"centralised, sample-level", "centralised, patient-level"}
    assert [e for e, _ in series["centralised, sample-level"]] == [3.0, 8.0, math.inf]
    assert [t for t, _ in dssgd_points(results)] == [0.01, 0.1, 1.0]
    assert write_epsilon_plot(results, tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 1000
    md = "\n".join(privacy_section(results, "p.png"))
    assert "| centralised, patient-level |" in md and "ε=∞" in md and "θu=0.1" in md


def test_default_dp_rows_cover_the_issue():
    labels = [label for label, _ in dp_rows(RunConfig())]
    mechs = {cfg.privacy.get("mechanism") for _, cfg in dp_rows(RunConfig())}
    assert len(labels) == 4 and {"dp-fedavg", "dp-sgd", "p3sgd"} <= mechs
    assert {cfg.protocol for _, cfg in dp_rows(dataclasses.replace(RunConfig()))} == {"fedavg", "cwt", "centralised", "dssgd"}
