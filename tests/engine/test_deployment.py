"""The same FedAvg ServerApp and ClientApp on a real Flower deployment.

The test starts ``flower-superlink`` and two ``flower-supernode``s on
127.0.0.1 (free ports, temporary FLWR_HOMEs), submits the app with
``flwr run`` and compares what the deployed ServerApp wrote with
:func:`privmed.run.execute` on the same config in-process.

Tolerance: none. The final weights are bit-identical and the metrics equal
(observed; asserted). Both sides use the same data, initial model, per-site
seeds and torch thread count; the SuperLink's random node ids change only the
order in which FedAvg adds up the two weighted replies, and a two-term float
sum does not depend on its order. With three or more sites the order of the
sum could change the last float32 bits; this test runs two.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.config import get_fused_config_from_dir, get_project_config, validate_config

import privmed
from privmed.config import from_dict, replace
from privmed.engine.deploy import client_app, config_of, run_config_of, wait_for_nodes, write_app
from privmed.engine.grid import InProcessGrid
from privmed.engine.result import load_predictor
from privmed.engine.session import build_federation, model_spec
from privmed.errors import PrivmedError
from privmed.run import execute

BIN = Path(sys.executable).parent
STARTUP_S = 60  # a loaded 2-core machine can take long to import Flower
RUN_S = 120

CONFIG = from_dict(
    {"seed": 5, "data": {"sites": 2, "image_size": 16}, "train": {"rounds": 2, "lr": 0.01, "batch_size": 16}}
)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (all held open together, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"flower-superlink exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    pytest.fail(f"flower-superlink did not listen on {port} within {STARTUP_S} s:\n{log.read_text()[-3000:]}")


class Deployment:
    """A SuperLink and two SuperNodes; ``stop`` kills their process groups."""

    def __init__(self, root: Path) -> None:
        self.root, self.procs, self.logs = root, [], []
        repo = str(
            Path(next(iter(privmed.__path__))).resolve().parent
        )  # also when privmed resolves as a namespace package
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
        }  # Flower's default 1 s, per app process started

    def start(self, name: str, *args: str) -> subprocess.Popen:
        home = self.root / name
        home.mkdir()
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            cwd=home,
            env={**self.env, "FLWR_HOME": str(home)},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def logs_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-2500:]}" for log in self.logs if log.exists())

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def deployment(tmp_path):
    dep = Deployment(tmp_path)
    try:
        port, *node_ports = _free_ports(1 + CONFIG.data.sites)
        link = dep.start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        _wait_listening(port, link, dep.logs[0])
        for site in range(CONFIG.data.sites):
            dep.start(
                f"supernode-{site}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{port}",
                "--port",
                str(node_ports[site]),
                "--node-config",
                f"partition-id={site} num-partitions={CONFIG.data.sites}",
            )
        dep.superlink = f"127.0.0.1:{port}"
        yield dep
    finally:
        dep.stop()


def test_app_config_round_trips_through_flowers_parser(tmp_path):
    # quotes and a backslash in a string value (a run name may not hold them: it is a folder name)
    config = replace(CONFIG, **{"data.dataset": 'folder:/data/ward "7" \\ north.csv'})
    write_app(tmp_path, config, result_dir="/r")
    project = get_project_config(tmp_path)
    assert validate_config(project, project_dir=tmp_path)[0]
    fused = get_fused_config_from_dir(tmp_path, {"train.lr": 0.5})  # what `flwr run -c train.lr=0.5` sends
    got, deploy = config_of(fused)
    assert got == replace(config, **{"train.lr": 0.5}) and deploy["result-dir"] == "/r"


def test_deployment_refuses_order_dependent_protocols():
    with pytest.raises(PrivmedError, match="fedavg.* only"):
        run_config_of(from_dict({"protocol": "cwt"}))


def test_server_waits_for_every_site_then_names_the_fix():
    grid = InProcessGrid({2: client_app})
    with pytest.raises(PrivmedError, match="only 1 of 2 SuperNodes joined"):
        wait_for_nodes(grid, 2, timeout_s=0.6)


def test_supernode_without_partition_id_gets_an_error_reply():
    grid = InProcessGrid({2: client_app}, run_config=run_config_of(CONFIG))
    msg = Message(RecordDict({"config": ConfigRecord({"seed": 1})}), 2, "train", group_id="1")
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error() and "partition-id" in reply.error.reason


def test_flower_deployment_matches_in_process(deployment, tmp_path):
    result_dir = tmp_path / "result"
    app = write_app(tmp_path / "app", CONFIG, result_dir=result_dir, wait_nodes_s=STARTUP_S).parent
    cli_home = tmp_path / "cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(
        '[superlink]\ndefault = "local-test"\n\n'
        f'[superlink.local-test]\naddress = "{deployment.superlink}"\ninsecure = true\n'
    )
    # --stream: print the run's logs (the ServerApp's traceback, if any) and return when it ends
    submit = subprocess.Popen(
        [str(BIN / "flwr"), "run", str(app), "local-test", "--stream"],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**deployment.env, "FLWR_HOME": str(cli_home)},
        start_new_session=True,
    )
    deployment.procs.append(submit)
    local = execute(CONFIG)  # in-process, while the deployment trains
    try:
        out, _ = submit.communicate(timeout=RUN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not end within {RUN_S} s\n{deployment.logs_tail()}")
    done = result_dir / "result.json"
    assert submit.returncode == 0 and done.exists(), f"{out[-4000:]}\n{deployment.logs_tail()}"
    deployed = json.loads(done.read_text())

    assert len(set(deployed["reliability"]["nodes"])) == 2 and deployed["reliability"]["completed"]
    assert [h["round"] for h in deployed["performance"]["history"]] == [1, 2]
    # Tolerance 0 (see the module docstring): bit-identical weights, equal metrics.
    final, ref = load_predictor(result_dir).to_torch_state_dict(), local.predictor.to_torch_state_dict()
    initial = model_spec(CONFIG, build_federation(CONFIG.data, CONFIG.seed)).build(seed=CONFIG.seed).state_dict()
    assert set(final) == set(ref) == set(initial)
    assert all(torch.equal(final[k], ref[k]) for k in final)
    assert not all(torch.equal(final[k], initial[k]) for k in final)  # it trained
    assert deployed["performance"]["final"] == local.performance["final"]
    assert deployed["performance"]["history"][-1]["val"] == local.performance["history"][-1]["val"]
