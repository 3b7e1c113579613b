"""The command each party runs: Flower's own ``flower-superlink``, ``flower-supernode`` and ``flwr``, with privmed's
arguments.

privmed does not re-implement Flower's transport; it writes the arguments a
hospital would otherwise have to get right by hand (TLS files, SuperNode
authentication, a state database, a free port per SuperNode, the site's name
and data) and starts Flower's commands with them:

- :func:`superlink_argv`: the coordinator's SuperLink, TLS on
  (``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``), SuperNode
  authentication on (``--enable-supernode-auth``), state in ``--database``.
- :func:`register_site`: ``flwr supernode register KEY.pub <connection> --name NAME``.
- :func:`supernode_argv`: one hospital's SuperNode, checking the SuperLink's
  certificate against the CA (``--root-certificates``) and authenticating with
  the site's private key (refused if group- or world-readable).
- :func:`write_connection`: the ``[superlink.<name>]`` entry of
  ``$FLWR_HOME/config.toml`` that ``flwr run`` and ``flwr supernode`` use.

Flower 1.42 serves the Fleet, Control and Runtime APIs of a SuperLink on one
HTTP(S) port (``--host``, default 127.0.0.1; ``--port``, default 8000).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from privmed.engine.certs import CertFiles, check_private, check_site_name
from privmed.errors import PrivmedError


def flower_bin(name: str) -> str:
    """A Flower command: next to this Python first (the venv privmed runs in), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise PrivmedError(f"{name} not found; install Flower (pip install flwr==1.42.0)")
    return found


def flwr_bin() -> str:
    return flower_bin("flwr")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (a SuperNode's own Runtime API port; two on one host must differ)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def superlink_argv(
    certs: CertFiles | None, *, host: str = "127.0.0.1", port: int = 9092, database: str | Path | None = None
) -> list[str]:
    """``flower-superlink`` with TLS and SuperNode authentication (``certs``), or plain HTTP (``certs=None``, tests)."""
    argv = [flower_bin("flower-superlink"), "--disable-runtime-dependency-installation", "--host", host]
    argv += ["--port", str(port)]
    if certs is None:
        argv.append("--insecure")
    else:
        certs = CertFiles(certs.root.resolve())  # Flower runs in its own folder: absolute paths
        check_private(certs.server_key)
        argv += ["--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert)]
        argv += ["--ssl-keyfile", str(certs.server_key), "--enable-supernode-auth"]
    if database is not None:
        argv += ["--database", str(Path(database).resolve())]
    return argv


def supernode_argv(
    superlink: str,
    *,
    site: str,
    key: str | Path | None,
    ca_cert: str | Path | None,
    partition: int | None = None,
    port: int | None = None,
    policy: str | Path | None = None,
    data: str | None = None,
) -> list[str]:
    """``flower-supernode`` for one hospital; ``key``/``ca_cert`` None only against an ``--insecure`` SuperLink.

    ``data``: the site's own data set (a spec, :func:`privmed.data.registry.site_data_spec`), which only this
    SuperNode is told; ``partition``: instead, site K of the run's phantom (demos, tests)."""
    check_site_name(site)
    argv = [flower_bin("flower-supernode"), "--superlink", superlink, "--port", str(port or free_port())]
    if ca_cert is None:
        argv.append("--insecure")
    else:
        if not Path(ca_cert).is_file():
            raise PrivmedError(f"CA certificate {ca_cert} does not exist (the coordinator's ca.crt)")
        argv += ["--root-certificates", str(Path(ca_cert).resolve())]
    if key is not None:
        argv += ["--auth-supernode-private-key", str(check_private(key).resolve())]
    node_config = f'site-name="{site}"' + (f" partition-id={int(partition)}" if partition is not None else "")
    if data is not None:
        if '"' in data:
            raise PrivmedError(f"the data path {data!r} holds a double quote, which a SuperNode's config cannot carry")
        node_config += f' data="{data}"'
    if policy is not None:  # the site's policy file (privmed.engine.policy), checked before it trains
        from privmed.engine.policy import load_policy

        load_policy(policy)  # a broken policy fails here, not at the first message
        node_config += f' policy="{Path(policy).resolve()}"'

    return [*argv, "--node-config", node_config]


def write_connection(flwr_home: str | Path, name: str, address: str, ca_cert: str | Path | None) -> Path:
    """Add (or replace) ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml``; the first entry becomes the default."""
    import tomllib

    import tomli_w

    path = Path(flwr_home) / "config.toml"
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    links = data.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if ca_cert is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(ca_cert).resolve())
    links[name] = entry
    links.setdefault("default", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path


def wait_listening(host: str, port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PrivmedError(f"flower-superlink exited with code {proc.returncode} (its log says why)")
        with socket.socket() as s:
            if s.connect_ex((host if host != "0.0.0.0" else "127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise PrivmedError(f"flower-superlink did not listen on {host}:{port} within {timeout_s:.0f} s")


def register_site(public_key: str | Path, *, name: str, connection: str, flwr_home: str | Path) -> str:
    """``flwr supernode register KEY.pub CONNECTION --name NAME``; Flower's output (the node id) on success."""
    check_site_name(name)
    env = {**os.environ, "FLWR_HOME": str(flwr_home)}
    argv = [flower_bin("flwr"), "supernode", "register", str(public_key), connection, "--name", name]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if "already in use" in done.stdout + done.stderr:  # a restarted coordinator (its --database keeps the sites)
        return f"site {name} is already registered"
    if done.returncode != 0:
        raise PrivmedError(f"registering site {name} failed: {(done.stdout + done.stderr).strip()[-500:]}")
    return done.stdout.strip()


def start(argv: Sequence[str], *, flwr_home: str | Path, log: Path | None = None, env: dict | None = None):
    """Start a Flower command in its own session (so a stop reaches its children), FLWR_HOME set."""
    Path(flwr_home).mkdir(parents=True, exist_ok=True)
    out = log.open("w") if log else None
    # the SuperLink and SuperNodes start flower-superexec and the app processes from PATH
    bin_dir = str(Path(argv[0]).parent)
    path = os.pathsep.join(p for p in (bin_dir, os.environ.get("PATH", "")) if p)
    return subprocess.Popen(
        list(argv),
        cwd=flwr_home,
        env={**os.environ, **(env or {}), "PATH": path, "FLWR_HOME": str(flwr_home)},
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Stop a command :func:`start` started, with the processes it started (its session), SIGKILL after a grace."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_until_stopped(proc: subprocess.Popen) -> int:
    """Wait for ``proc``; Ctrl-C or SIGTERM to this process stops it (and what it started) first."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(proc)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
