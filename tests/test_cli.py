"""The CLI: one-line errors with a fix, exit codes, nothing half-written."""

import json

from typer.testing import CliRunner

from privmed.cli import app

runner = CliRunner()
SMALL = ["--image-size", "16", "--rounds", "1"]


def invoke(*args, tmp):
    return runner.invoke(app, [*args, "--runs-dir", str(tmp)])


def test_train_writes_result_json(tmp_path):
    res = invoke(
        "train", "--protocol", "cwt", "--split", "dirichlet:0.5", "--seed", "0", "--name", "t1", *SMALL, tmp=tmp_path
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "t1" / "result.json").read_text())
    assert data["protocol"] == "cwt" and data["dataset"]["split"] == "dirichlet:0.5"
    assert "accuracy" in res.output


def test_config_file_and_flags_compose(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('protocol = "swt"\nname = "fromtoml"\n[data]\nimage_size = 16\n[train]\nrounds = 1\n')
    res = invoke("train", "--config", str(cfg), "--seed", "3", tmp=tmp_path)
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "fromtoml" / "result.json").read_text())
    assert data["protocol"] == "swt" and data["seed"] == 3


def assert_one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    out = res.output.strip()
    assert "Traceback" not in out
    assert out.startswith("error:"), out
    for n in needles:
        assert n in out, out


def test_unknown_names_list_the_valid_ones(tmp_path):
    assert_one_line_error(invoke("train", "--protocol", "fedsgd", *SMALL, tmp=tmp_path), "fedsgd", "cwt", "fedavg")
    assert_one_line_error(invoke("train", "--model", "resnet9000", *SMALL, tmp=tmp_path), "densenet121")
    assert_one_line_error(invoke("train", "--split", "bananas", *SMALL, tmp=tmp_path), "dirichlet")
    assert_one_line_error(invoke("train", "--dataset", "imagenet", *SMALL, tmp=tmp_path), "phantom")
    assert_one_line_error(invoke("train", "--privacy", "magic", *SMALL, tmp=tmp_path), "none")
    assert not any(tmp_path.iterdir())


def test_protocol_options_are_strict_and_typed(tmp_path):
    """A misspelt or mistyped protocol option is refused before anything runs, naming the valid keys and types."""
    assert_one_line_error(
        invoke("train", "--protocol", "cwt", "--opt", "oder=shuffled", *SMALL, tmp=tmp_path),
        "unknown option 'oder' for protocol cwt",
        "valid options: order (str)",
    )
    assert_one_line_error(
        invoke("train", "--protocol", "dssgd", "--opt", "theta_u=abc", *SMALL, tmp=tmp_path),
        "option 'theta_u' for protocol dssgd must be float, got 'abc'",
        "theta_d (float)",
        "selection (str)",
    )
    assert_one_line_error(
        invoke("train", "--protocol", "swt", "--order", "shuffled", *SMALL, tmp=tmp_path),
        "unknown option 'order' for protocol swt",
        "valid options: none",
    )
    assert_one_line_error(
        invoke("train", "--protocol", "cwt", "--privacy", "secagg", *SMALL, tmp=tmp_path),
        "secagg masks FedAvg updates; use it with --protocol secagg-fedavg, not cwt",
    )
    assert not any(tmp_path.iterdir())


def test_mechanisms_lists_each_protocol_with_its_options():
    res = runner.invoke(app, ["mechanisms"])
    assert res.exit_code == 0, res.output
    assert "shokri2015-dssgd" in res.output and "theta_u (float)" in res.output and "dp-sgd" in res.output


def test_impossible_splits_are_refused(tmp_path):
    assert_one_line_error(invoke("train", "--split", "dirichlet:0", *SMALL, tmp=tmp_path), "alpha")
    assert_one_line_error(invoke("train", "--split", "iid", "--sites", "5000", *SMALL, tmp=tmp_path), "patients")
    assert not any(tmp_path.iterdir())


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('protocol = "cwt"\nrounds = 3\n')
    assert_one_line_error(invoke("train", "--config", str(bad), tmp=tmp_path), "rounds", "valid keys")
    bad.write_text("[train]\nroundz = 3\n")
    assert_one_line_error(invoke("train", "--config", str(bad), tmp=tmp_path), "roundz", "local_epochs")
    bad.write_text("protocol = \n")
    assert_one_line_error(invoke("train", "--config", str(bad), tmp=tmp_path), "not valid TOML")
    assert_one_line_error(invoke("train", "--config", str(tmp_path / "missing.toml"), tmp=tmp_path), "does not exist")


def test_missing_medmnist_file_says_where_and_how(tmp_path):
    res = invoke("train", "--dataset", f"medmnist:{tmp_path}/nope.npz", "--split", "iid", *SMALL, tmp=tmp_path)
    assert_one_line_error(res, "nope.npz", "pip install medmnist")


def test_nan_loss_is_a_one_line_error_and_nothing_is_written(tmp_path):
    assert_one_line_error(
        invoke("train", "--protocol", "fedavg", "--lr", "1e12", "--rounds", "2", "--image-size", "16", tmp=tmp_path),
        "--lr",
    )
    assert not any(tmp_path.iterdir())
