"""The privacy–utility table and plot are computed from result dicts: ε series per protocol and DP unit, ∞ = no DP."""

import math

from privmed.bench.privacy import (
    DP_SCALE,
    curves,
    dp_rows,
    dssgd_points,
    privacy_section,
    privacy_suite,
    write_epsilon_plot,
)
from privmed.config import RunConfig
from privmed.protocols.base import TrainSettings
from privmed.run import execute
from tests.privacy.conftest import make_fed


def test_privacy_utility_from_results(tmp_path):
    fed = make_fed(n_sites=2)
    base = RunConfig(train=TrainSettings(rounds=1, batch_size=4))
    rows = [
        r
        for r in privacy_suite(base)
        if r[1].protocol in ("centralised", "dssgd") and r[1].privacy.get("epsilon", 3.0) in (3.0, 8.0)
    ]
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
    rows = dp_rows(RunConfig())
    mechs = {cfg.privacy.get("mechanism") for _, cfg in rows}
    assert len(rows) == 5 and {"dp-fedavg", "dp-sgd", "p3sgd"} <= mechs
    assert {cfg.protocol for _, cfg in rows} == {"fedavg", "cwt", "centralised", "dssgd"}
    # every DP row has a non-private reference on the same (larger) data and settings
    dp = [cfg for _, cfg in rows if cfg.privacy]
    reference = [cfg for _, cfg in rows if not cfg.privacy and cfg.protocol == "centralised"]
    assert len(reference) == 1 and all((c.data, c.train) == (reference[0].data, reference[0].train) for c in dp)
    assert reference[0].data.patients_scale == DP_SCALE > 1
    assert len({cfg.run_name for _, cfg in rows}) == len(rows)


def test_the_infinite_epsilon_point_comes_from_the_same_data_and_settings():
    def result(protocol, eps, scale):
        privacy = {} if eps is None else {"epsilon": eps, "unit": "sample"}
        return {
            "protocol": protocol,
            "privacy": privacy,
            "config": {"data": {"patients_scale": scale}, "train": {}},
            "performance": {"metric": "accuracy", "final": {"accuracy": 0.5 if eps else 0.9 + scale / 100}},
        }

    series = curves(
        [
            result("cwt", None, 1),
            result("cwt", None, 10),
            result("cwt", 3.0, 10),
            result("fedavg", 3.0, 10),
            result("fedavg", None, 1),
        ]
    )
    assert series["cwt, sample-level"] == [(3.0, 0.5), (math.inf, 1.0)]
    assert series["fedavg, sample-level"] == [(3.0, 0.5)]  # its only plain run is on other data
