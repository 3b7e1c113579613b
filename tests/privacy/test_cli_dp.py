"""`privmed train --privacy ...` and `--opt` end to end through the CLI, and a refused run's one-line error."""

import json

import pytest
from typer.testing import CliRunner

import privmed.engine.session
from privmed.cli import app
from tests.privacy.conftest import make_fed


@pytest.fixture
def toy_data(monkeypatch):
    fed = make_fed(n_sites=2)
    monkeypatch.setattr(privmed.engine.session, "build_federation", lambda cfg, seed: fed)
    return fed


def test_train_with_dp_sgd_writes_epsilon_and_unit(toy_data, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--protocol",
            "cwt",
            "--rounds",
            "1",
            "--batch-size",
            "4",
            "--privacy",
            "dp-sgd",
            "--privacy-opt",
            "epsilon=3",
            "--privacy-opt",
            "delta=1e-3",
            "--name",
            "cwtdp",
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    priv = json.loads((tmp_path / "cwtdp" / "result.json").read_text())["privacy"]
    assert priv["unit"] == "sample" and 0 < priv["epsilon"] <= 3.0
    assert "ε (sample-level" in res.output  # the final table shows the spend


@pytest.mark.parametrize(
    "flag, value, key", [("--epsilon", "2", "target_epsilon"), ("--noise-multiplier", "1.5", "noise_multiplier")]
)
def test_dp_target_flags(toy_data, tmp_path, flag, value, key):
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--protocol",
            "centralised",
            "--rounds",
            "1",
            "--batch-size",
            "4",
            "--privacy",
            "dp-sgd",
            flag,
            value,
            "--privacy-opt",
            "delta=1e-3",
            "--name",
            "f",
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    reported = json.loads((tmp_path / "f" / "result.json").read_text())["privacy"][key]
    values = set(reported.values()) if isinstance(reported, dict) else {reported}  # σ is reported per site
    assert values == {float(value)}


def test_dp_target_without_a_mechanism_is_refused(toy_data, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--protocol",
            "fedavg",
            "--rounds",
            "1",
            "--epsilon",
            "3",
            "--name",
            "n",
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 2 and "without a mechanism; add --privacy" in res.output
    assert not (tmp_path / "n").exists()


def test_dssgd_options_from_the_cli(toy_data, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--protocol",
            "dssgd",
            "--rounds",
            "1",
            "--opt",
            "theta_u=0.05",
            "--name",
            "d",
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "d" / "result.json").read_text())["privacy"]["shared_fraction_up"] == 0.05


def test_over_budget_refusal_is_one_line_and_writes_nothing(toy_data, tmp_path):
    key = tmp_path / "k.bin"
    assert CliRunner().invoke(app, ["budget", "--new-key", str(key)]).exit_code == 0
    opts = [
        "--privacy",
        "p3sgd",
        "--privacy-opt",
        "noise_multiplier=0.8",
        "--privacy-opt",
        "delta=1e-3",
        "--privacy-opt",
        f"ledger=sqlite:///{tmp_path / 'l.db'}",
        "--privacy-opt",
        f"ledger_key={key}",
        "--privacy-opt",
        "budget=0.5",
    ]
    res = CliRunner().invoke(
        app, ["train", "--protocol", "fedavg", "--rounds", "2", "--name", "r", "--runs-dir", str(tmp_path), *opts]
    )
    assert res.exit_code == 2 and "refused before training" in res.output
    assert not (tmp_path / "r").exists()
