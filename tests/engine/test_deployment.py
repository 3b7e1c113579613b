"""privmed on a real Flower deployment: SuperLink + three SuperNodes on 127.0.0.1, TLS and node authentication on.

The module starts, once, what the README's "Running across hospitals"
walk-through starts (:mod:`privmed.engine.launch`, keys from
:mod:`privmed.engine.certs`): ``flower-superlink`` with TLS,
``--enable-supernode-auth`` and a state database, three sites registered with
``flwr supernode register``, and one ``flower-supernode`` per site
(partition k of the phantom), each with its key and the CA certificate. Runs
are submitted with ``flwr run`` and compared with :func:`privmed.run.execute`
on the same config in-process.

Tolerance: none. Sites are numbered by name and replies aggregated in the
order they were asked (:class:`privmed.engine.site_grid.SiteGrid`), so the
final weights are bit-identical and the metrics equal (asserted) for FedAvg,
CWT, HE-FedAvg (Paillier: exact sums of quantised updates) and SNT, whose
sites share their secret from a file (the coordinator keeps the model sealed;
the test opens it as a site would). Metrics are the sites' own, summed.
tests/engine/test_site_grid.py checks every deployable protocol the same
way without servers.

Two more hospitals (``ward-a``, ``ward-b``) join the same SuperLink: each
SuperNode serves a small MedMNIST-format file from its own folder, no
phantom; a run names its sites (``site-names``), so the wards' run is
submitted with the four phantom runs and all five share the SuperLink.

The security tests try what must fail: a SuperNode whose key was not
registered, a SuperNode that does not have the CA certificate, plain HTTP to
the TLS SuperLink. The last test kills one SuperNode with SIGKILL in the
middle of a run, which must finish with the others in bounded time; it prints
the time to notice and the time to finish.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.config import get_fused_config_from_dir, get_project_config, validate_config

import privmed
from privmed.config import from_dict, replace
from privmed.engine import launch
from privmed.engine.certs import make_certs
from privmed.engine.deploy import client_app, config_of, run_config_of, write_app
from privmed.engine.grid import InProcessGrid
from privmed.engine.result import load_predictor
from privmed.privacy.sealed import sealed_record
from privmed.run import execute
from tests.engine.conftest import opened, privacy_of
from tests.engine.test_site_data import write_npz

BIN = Path(sys.executable).parent
STARTUP_S = 60  # a loaded 2-core machine can take long to import Flower
RUN_S = 480  # every message starts a ClientApp process on the SuperNode; 2 rounds = 5 messages per site
SITES = ["site-0", "site-1", "site-2"]
WARDS = {"ward-a": (24, 6, 8), "ward-b": (40, 8, 10)}  # hospitals serving their own files: train, val, test images

CONFIG = from_dict(
    {"seed": 5, "data": {"sites": 3, "image_size": 16}, "train": {"rounds": 2, "lr": 0.01, "batch_size": 16}}
)


class Hospitals:
    """The coordinator's SuperLink and one SuperNode per site; ``stop`` ends them and what they started."""

    def __init__(self, root: Path) -> None:
        self.root, self.procs, self.logs = root, {}, {}
        repo = str(Path(next(iter(privmed.__path__))).resolve().parent)  # also as a namespace package
        self.env = {
            "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",  # Flower's default 1 s, per app process started
        }
        self.certs = make_certs(root / "certs", sites=[*SITES, *WARDS, "intruder"])
        self.port = launch.free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.admin = root / "admin"

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.logs[name] = self.root / f"{name}.log"
        self.procs[name] = launch.start(argv, flwr_home=self.root / name, log=self.logs[name], env=self.env)
        return self.procs[name]

    def start_site(self, k: int, **changes) -> subprocess.Popen:
        site = SITES[k]
        args = {"site": site, "key": self.certs.site_key(site), "ca_cert": self.certs.ca_cert, "partition": k}
        return self.start(site, launch.supernode_argv(self.superlink, **{**args, **changes}))

    def logs_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in self.logs.values() if p.exists())

    def submit(self, config, result_dir: Path, site_names=SITES, **deploy) -> tuple[subprocess.Popen, Path]:
        app = write_app(
            result_dir / "app", config, result_dir=result_dir, wait_nodes_s=STARTUP_S, site_names=site_names, **deploy
        ).parent
        proc = subprocess.Popen(
            [launch.flwr_bin(), "run", str(app), "hospitals", "--stream"],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env, "FLWR_HOME": str(self.admin)},
            start_new_session=True,
        )
        self.procs[f"run-{result_dir.name}"] = proc
        return proc, result_dir / "result.json"

    def finish(self, proc: subprocess.Popen, done: Path) -> dict:
        try:
            out, _ = proc.communicate(timeout=RUN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end within {RUN_S} s\n{self.logs_tail()}")
        assert proc.returncode == 0 and done.exists(), f"{out[-4000:]}\n{self.logs_tail()}"
        return json.loads(done.read_text())

    def stop(self) -> None:
        for proc in self.procs.values():
            launch.stop(proc)


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    dep = Hospitals(tmp_path_factory.mktemp("hospitals"))
    try:
        link = dep.start("superlink", launch.superlink_argv(dep.certs, port=dep.port, database=dep.root / "state.db"))
        launch.wait_listening("127.0.0.1", dep.port, link, timeout_s=STARTUP_S)
        launch.write_connection(dep.admin, "hospitals", dep.superlink, dep.certs.ca_cert)
        for site in SITES:
            launch.register_site(dep.certs.site_public(site), name=site, connection="hospitals", flwr_home=dep.admin)
        for k in range(len(SITES)):
            dep.start_site(k)
        yield dep
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def wards(hospitals):
    """Two more hospitals on the same SuperLink, each serving its own MedMNIST-format file from its own folder."""
    files = {}
    for k, (ward, sizes) in enumerate(WARDS.items()):
        files[ward] = write_npz(hospitals.root / "wards" / ward / f"{ward}.npz", sizes, seed=k)
        pub = hospitals.certs.site_public(ward)
        launch.register_site(pub, name=ward, connection="hospitals", flwr_home=hospitals.admin)
        argv = launch.supernode_argv(
            hospitals.superlink,
            site=ward,
            key=hospitals.certs.site_key(ward),
            ca_cert=hospitals.certs.ca_cert,
            data=f"medmnist:{files[ward]}",
        )
        hospitals.start(ward, argv)
    return files


def test_app_config_round_trips_through_flowers_parser(tmp_path):
    # quotes and a backslash in a string value (a run name may not hold them: it is a folder name)
    config = replace(CONFIG, **{"data.dataset": 'folder:/data/ward "7" \\ north.csv'})
    write_app(tmp_path, config, result_dir="/r")
    project = get_project_config(tmp_path)
    assert validate_config(project, project_dir=tmp_path)[0]
    fused = get_fused_config_from_dir(tmp_path, {"train.lr": 0.5})  # what `flwr run -c train.lr=0.5` sends
    got, deploy = config_of(fused)
    assert got == replace(config, **{"train.lr": 0.5}) and deploy["result-dir"] == "/r"


def test_supernode_without_a_site_identity_gets_an_error_reply():
    grid = InProcessGrid({2: client_app}, run_config=run_config_of(CONFIG))
    msg = Message(RecordDict({"config": ConfigRecord({"seed": 1})}), 2, "train", group_id="1")
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error() and "partition-id" in reply.error.reason


PROTOCOLS = ["fedavg", "cwt", "he-fedavg", "snt"]


# the wards' run (test_sites_serving_their_own_files_deploy): FedAvg over the two files, asking for 32x32 images
WARD_CONFIG = from_dict(
    {"seed": 5, "protocol": "fedavg", "data": {"sites": 2, "image_size": 32}, "train": {"rounds": 1, "lr": 0.01}}
)


@pytest.fixture(scope="module")
def submitted(hospitals, wards, tmp_path_factory):
    """The four protocols' runs and the wards' run, submitted at once: the SuperLink runs them side by side and
    each SuperNode answers every run's messages, so the suite waits for one deployment's latency instead of five.
    (The kill -9 run comes after them: it kills site-2, which serves the four.)"""
    root = tmp_path_factory.mktemp("runs")
    configs = {p: replace(CONFIG, protocol=p, privacy=privacy_of(p, root)) for p in PROTOCOLS}
    runs = {p: (config, *hospitals.submit(config, root / p)) for p, config in configs.items()}
    runs["wards"] = (WARD_CONFIG, *hospitals.submit(WARD_CONFIG, root / "wards", site_names=list(WARDS)))
    return runs


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_deployment_matches_in_process(hospitals, submitted, protocol):
    config, submit, done = submitted[protocol]
    local = execute(config)  # in-process, while the deployments train
    deployed = hospitals.finish(submit, done)

    assert deployed["reliability"]["sites"] == SITES and deployed["reliability"]["completed"]
    assert [h["round"] for h in deployed["performance"]["history"]] == [1, 2]
    saved = load_predictor(done.parent)
    if protocol in ("he-fedavg", "snt"):  # the coordinator holds the model sealed; a site opens it
        assert sealed_record(saved) is not None
        saved = opened(config, saved)
    # Tolerance 0 (see the module docstring): bit-identical weights, equal metrics (the sites measured both).
    final, ref = saved.to_torch_state_dict(), local.predictor.to_torch_state_dict()
    assert set(final) == set(ref) and all(torch.equal(final[k], ref[k]) for k in final)
    assert deployed["performance"]["final"] == local.performance["final"]
    assert deployed["performance"]["history"][-1]["val"] == local.performance["history"][-1]["val"]


def _exit(proc: subprocess.Popen, log: Path, timeout_s: float = STARTUP_S) -> tuple[int, str]:
    """The SuperNode's exit code and log once it has stopped (a test fails if it keeps running)."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the SuperNode kept running: {log.read_text()[-2000:]}")
    return proc.returncode, log.read_text()


def test_a_supernode_whose_key_is_not_registered_is_refused(hospitals):
    key = hospitals.certs.site_key("intruder")
    proc = hospitals.start(
        "intruder",
        launch.supernode_argv(hospitals.superlink, site="intruder", key=key, ca_cert=hospitals.certs.ca_cert),
    )
    code, log = _exit(proc, hospitals.logs["intruder"])
    assert code != 0 and "Failed to activate SuperNode" in log, log[-2000:]


def test_a_supernode_without_the_ca_certificate_cannot_connect(hospitals):
    argv = launch.supernode_argv(
        hospitals.superlink, site="site-0", key=hospitals.certs.site_key("site-0"), ca_cert=None
    )
    argv.remove("--insecure")  # TLS with the system's trust store, which does not know our CA
    proc = hospitals.start("no-ca", argv)
    code, log = _exit(proc, hospitals.logs["no-ca"])
    assert code != 0 and "CERTIFICATE_VERIFY_FAILED" in log, log[-2000:]


def test_plain_http_to_the_tls_superlink_fails(hospitals):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{hospitals.superlink}/", timeout=10).raise_for_status()
    # the same request over TLS, checked against our CA, is answered (with a 404 for this path): the server is up
    assert httpx.get(f"https://{hospitals.superlink}/", verify=str(hospitals.certs.ca_cert), timeout=10).status_code


def test_kill_9_of_a_supernode_mid_run_the_others_finish(hospitals, tmp_path):
    """SIGKILL site-2's SuperNode once round 1 is under way: FedAvg finishes its 2 rounds with site-0 and site-1.

    Prints the time from the kill until the coordinator noticed (first event about site-2) and until the run ended.
    """
    config = replace(CONFIG, protocol="fedavg")  # 2 rounds: the kill in round 1, round 2 without site-2
    log = hospitals.logs["site-2"]
    earlier = len(log.read_text())  # the log holds the earlier tests' messages: wait for this run's first train
    submit, done = hospitals.submit(config, tmp_path / "kill9", reply_timeout_s=15.0)
    deadline = time.monotonic() + RUN_S
    while "train message" not in log.read_text()[earlier:] and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = time.time()
    os.killpg(hospitals.procs["site-2"].pid, 9)
    deployed = hospitals.finish(submit, done)
    ended = time.time()
    rel = deployed["reliability"]
    assert rel["completed"] and [h["round"] for h in deployed["performance"]["history"]] == [1, 2]
    noticed = [e for e in rel["events"] if e["site"] == "site-2"]
    assert noticed, rel
    print(
        f"\nkill -9 of site-2: noticed after {noticed[0]['at'] - killed:.1f} s ({noticed[0]['event']}); "
        f"run finished {ended - killed:.1f} s after the kill; events {[(e['event'], e['site']) for e in noticed]}"
    )


def test_sites_serving_their_own_files_deploy(hospitals, wards, submitted):
    """No phantom: two SuperNodes serve 16x16 files of different sizes; the run asks for 32x32 phantom images, so
    the shape and sizes result.json reports can only come from the sites' answers, and no path reaches the
    coordinator (its run config is the app's pyproject.toml). FedAvg only: CWT over the sites' own files is
    tests/engine/test_site_data.py (the same set-up query, without servers)."""
    _, submit, done = submitted["wards"]
    app = (done.parent / "app" / "pyproject.toml").read_text()
    assert not any(str(path.parent) in app for path in wards.values())
    deployed = hospitals.finish(submit, done)

    assert deployed["reliability"]["sites"] == list(WARDS) and deployed["reliability"]["completed"]
    assert deployed["dataset"]["image_shape"] == [1, 16, 16]
    assert {d["site"]: tuple(d["images"].values()) for d in deployed["dataset"]["distribution"]} == WARDS
    assert deployed["performance"]["evaluation"]["test_images"] == sum(s[2] for s in WARDS.values())
    assert set(deployed["performance"]["per_site"]) == set(WARDS)
