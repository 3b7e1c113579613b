"""The CLI: one-line errors with a fix, exit codes, nothing half-written."""

import json

import pytest
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
        invoke("train", "--protocol", "fedavg", "--order", "shuffled", *SMALL, tmp=tmp_path),
        "unknown option 'order' for protocol fedavg",
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


# ----------------------------------------------------------------------------- what the CLI refuses (issue 19)


def assert_refused(res, *needles):
    """One line, exit code 2, no traceback."""
    assert_one_line_error(res, *needles)
    assert len(res.output.strip().splitlines()) == 1, res.output


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[train]\nrounds = "ten"\n', "train.rounds must be int, got 'ten'"),
        ('[data]\nsites = "4"\n', "data.sites must be int, got '4'"),
        ('[train]\nlr = "fast"\n', "train.lr must be float, got 'fast'"),
        ("data = 5\n", "config key data must be a table"),
        ('options = "x"\n', "options must be a table"),
        ("seed = -1\n", "seed must be from 0 to 2**32 - 1"),
    ],
)
def test_wrong_types_in_a_config_file_are_one_line_errors(tmp_path, toml, needle):
    bad = tmp_path / "bad.toml"
    bad.write_text(toml)
    assert_refused(invoke("train", "--config", str(bad), tmp=tmp_path), needle)


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**70)])
def test_seeds_outside_numpys_range_are_refused(tmp_path, seed):
    assert_refused(invoke("train", "--seed", seed, *SMALL, tmp=tmp_path), "seed must be from 0 to 2**32 - 1")


@pytest.mark.parametrize(
    ("size", "needle"), [("100000", "37.3 GiB as float32"), ("1024", "phantom's 1720 images 6.7 GiB"), ("2", "got 2")]
)
def test_image_sizes_are_bounded_and_the_error_says_the_memory_needed(tmp_path, size, needle):
    assert_refused(invoke("train", "--image-size", size, "--rounds", "1", tmp=tmp_path), "from 8 to 512 pixels", needle)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["../../../tmp/x", "/abs/path", ".", "..", "a/b", "a b", ""])
def test_a_run_name_is_a_plain_folder_name(tmp_path, name):
    runs = tmp_path / "runs"
    res = runner.invoke(app, ["train", "--name", name, *SMALL, "--runs-dir", str(runs)])
    if name == "":  # empty: the default name
        assert res.exit_code == 0, res.output
        return
    assert_refused(res, "is not a plain folder name")
    assert not any(tmp_path.rglob("*.json")), list(tmp_path.rglob("*"))


def test_a_finished_run_is_not_overwritten_without_overwrite_and_no_stale_audit_is_left(tmp_path):
    assert invoke("train", "--name", "r", *SMALL, tmp=tmp_path).exit_code == 0
    before = (tmp_path / "r" / "result.json").read_bytes()
    (tmp_path / "r" / "audit.json").write_text('{"protocol": "another"}')
    assert_refused(invoke("train", "--name", "r", "--protocol", "cwt", *SMALL, tmp=tmp_path), "--overwrite")
    assert (tmp_path / "r" / "result.json").read_bytes() == before
    res = invoke("train", "--name", "r", "--protocol", "cwt", "--overwrite", *SMALL, tmp=tmp_path)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "result.json").read_text())["protocol"] == "cwt"
    assert not (tmp_path / "r" / "audit.json").exists()  # it described the replaced result


@pytest.mark.parametrize("damage", ["round", "config", "history"])
def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path, damage):
    import torch

    from privmed.config import DataConfig, RunConfig, TrainSettings
    from privmed.engine.checkpoint import Checkpoint
    from privmed.engine.session import assemble

    cfg = RunConfig(name="ck", data=DataConfig(image_size=16), train=TrainSettings(rounds=1))
    path = tmp_path / "ck" / "checkpoint.pt"
    session = assemble(cfg)
    Checkpoint(path).save(session, 1, session.ctx.initial, [], 0.0)
    state = torch.load(path, weights_only=True)
    if damage == "round":
        state["round"] = 99
    else:
        del state[damage]
    torch.save(state, path)
    res = invoke("train", "--name", "ck", *SMALL, "--resume", tmp=tmp_path)
    assert_refused(res, "checkpoint", "delete")


def test_a_garbled_model_is_a_one_line_error_under_audit(tmp_path):
    assert invoke("train", "--name", "g", *SMALL, tmp=tmp_path).exit_code == 0
    (tmp_path / "g" / "model.pt").write_bytes(b"PK\x03\x04 garbled")
    res = runner.invoke(app, ["audit", str(tmp_path / "g"), "--attack", "membership"])
    assert_refused(res, "model.pt is not a privmed model")


def test_an_unexpected_error_is_one_line_and_a_log_without_local_variables(tmp_path):
    """A bug prints one line and the path of a 0600 log; no traceback shows a local variable (they held keys)."""
    import os
    import subprocess
    import sys

    script = (
        "import privmed.run, sys\n"
        "def boom(*a, **k):\n"
        "    hmac_key = bytes.fromhex('c0ffee' * 10)\n"
        "    raise FileExistsError(17, 'File exists')\n"
        "privmed.run.run = boom\n"
        "sys.argv = ['privmed', 'train', '--image-size', '16', '--rounds', '1', '--runs-dir', sys.argv[1]]\n"
        "import privmed.cli\n"
        "privmed.cli.main()\n"
    )
    env = {**os.environ, "PRIVMED_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300
    )
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert len(out.strip().splitlines()) == 1, out
    assert "FileExistsError" in out and "c0ffee" not in out and "Traceback" not in out
    (log,) = (tmp_path / "home" / "logs").iterdir()
    assert str(log) in out.replace("\n", "")
    text = log.read_text()
    assert "Traceback" in text and "FileExistsError" in text and "c0ffee" not in text
    assert log.stat().st_mode & 0o777 == 0o600


def test_run_outputs_are_owner_only(tmp_path):
    import os

    old = os.umask(0o022)  # the usual umask, which made them 0644
    try:
        assert invoke("train", "--name", "p", *SMALL, tmp=tmp_path).exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o700
    for f in (tmp_path / "p").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert {f.name for f in (tmp_path / "p").iterdir()} == {"result.json", "model.pt"}


def test_the_update_norm_bound_is_configurable_and_reported(tmp_path):
    assert invoke("train", "--name", "n", "--norm-ratio", "7", *SMALL, tmp=tmp_path).exit_code == 0
    bound = json.loads((tmp_path / "n" / "result.json").read_text())["reliability"]["update_norm_bound"]
    assert bound["ratio"] == 7.0 and "median" in bound["rule"]
    assert_refused(invoke("train", "--norm-ratio", "0.5", *SMALL, tmp=tmp_path), "norm_ratio")
