"""privmed on a real Flower deployment: one ServerApp, one ClientApp.

The in-process engine (:mod:`privmed.run`) and a Flower deployment
(``flower-superlink``, one ``flower-supernode`` per hospital, ``flwr run``)
run the same code: :data:`server_app` builds the initial model exactly as
:func:`privmed.run.execute` does and calls the protocol's ``run`` with a
:class:`~privmed.protocols.base.ProtocolContext` whose grid is the Grid that
Flower hands it; :data:`client_app` delegates every message to
:func:`privmed.site.make_client_app` for the site numbered by the SuperNode's
``partition-id`` (``--node-config "partition-id=0"``) or over its own data (``data="medmnist:/path.npz"``).

The privmed run configuration travels as Flower's run config, flattened
(``data.sites``, ``train.rounds``, ``privacy.mechanism``, ...; see
:func:`run_config_of`), plus two deployment keys: ``result-dir``, where the
ServerApp writes ``result.json`` and ``model.pt`` in the schema of
:meth:`privmed.run.RunResult.save`, and ``wait-nodes-s``, how long it waits
for every SuperNode to join.

What differs from the in-process engine:

- Sites are numbered by name, not by the SuperLink's random node ids
  (:class:`privmed.engine.site_grid.SiteGrid`): site *k* in name order is the
  k-th site in-process, so sequential protocols visit the same hospitals in
  the same order. A protocol whose spec has a ``deploy_refusal`` is refused
  with that reason (centralised pools raw data; FNT needs a site-to-site
  channel Flower does not have).
- Encrypting protocols (HE-FedAvg, SNT): the sites share their secret through
  a file given to each hospital (``--privacy-opt keyring_file=`` /
  ``key_file=``); the coordinator's mechanism holds no key
  (:meth:`~privmed.privacy.base.Mechanism.at_coordinator`), so the model it
  checkpoints and saves (``model.pt``) stays sealed: a site opens it.
- The wait for replies is bounded (``reply-timeout-s``): a SuperNode killed
  mid-run costs one timeout (or less: the SuperLink marking it offline ends
  the wait), then the run goes on with the others; a restarted site rejoins.
- The coordinator measures nothing on data: after every round each site
  summarises the model on its own validation split (and at the end on its
  test split) and the coordinator sums the summaries
  (:func:`privmed.engine.result.evaluate_at_sites`, :mod:`privmed.evaluation`),
  as the in-process harness does, so both engines report the same numbers.
- The coordinator holds no site data: at set-up it asks each site for its
  data's description (shape, classes, split sizes;
  :mod:`privmed.engine.describe`), checks that the sites agree and builds the
  model from it; with a privacy mechanism it then gives every site the
  roster of descriptions, which the site's copy of the mechanism plans with.
  A site serves its own files (node config ``data``: ``privmed site --data
  hospital_a.npz``) or, for demos, the run's phantom's site ``partition-id``.
- Bytes are not counted (Flower's Grid does not report them).
- Replies are aggregated in the order the SuperLink returns them. With two
  sites the result is bit-identical to the in-process run (a two-term sum
  does not depend on order; tests/engine/test_deployment.py); with three or
  more, the summation order may change the last float32 bits.
- Fault injection (``faults``) is in-process only; on a deployment, kill a
  SuperNode.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from privmed.config import RunConfig, from_dict
from privmed.data.base import Federation
from privmed.data.registry import load_site
from privmed.engine.checkpoint import Checkpoint
from privmed.engine.describe import DESCRIBE, ROSTER, describe, federation_of, roster_of, with_own_data
from privmed.engine.faults import parse_faults
from privmed.engine.policy import load_policy, policy_problem, site_privacy
from privmed.engine.result import Monitor, RunResult, build_result
from privmed.engine.session import (
    FIRST_NODE_ID,
    assemble,
    build_federation,
    model_spec,
    plan_of,
    protocol_site_mods,
    resolve,
)
from privmed.engine.site_grid import IDENTIFY, SiteGrid, as_addressed
from privmed.errors import PrivmedError
from privmed.run import set_threads
from privmed.site import make_client_app

RESULT_DIR = "result-dir"
WAIT_NODES = "wait-nodes-s"
REPLY_TIMEOUT = "reply-timeout-s"
RESUME = "resume"  # continue from result-dir/checkpoint.pt (the coordinator was killed)
SITE_NAMES = "site-names"  # the run's sites, comma-separated ("": every site online; a SuperLink may serve more)
_DEPLOY_KEYS = {RESULT_DIR: "", WAIT_NODES: 120.0, REPLY_TIMEOUT: 600.0, RESUME: False, SITE_NAMES: ""}
_SECTIONS = ("data", "train", "options", "privacy")


def run_config_of(
    config: RunConfig,
    *,
    result_dir: str | Path = "",
    wait_nodes_s: float = 120.0,
    reply_timeout_s: float = 600.0,
    resume: bool = False,
    site_names: Sequence[str] = (),
) -> dict[str, Any]:
    """``config`` as Flower run config: flat keys, TOML scalars only."""
    _check_protocol(config)
    out: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if key in _SECTIONS:
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    out[RESULT_DIR], out[WAIT_NODES], out[REPLY_TIMEOUT] = str(result_dir), float(wait_nodes_s), float(reply_timeout_s)
    out[RESUME] = bool(resume)
    out[SITE_NAMES] = ",".join(site_names)
    return out


def config_of(run_config: Mapping[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """Inverse of :func:`run_config_of`: the RunConfig and the deployment keys."""
    values: dict[str, Any] = {}
    deploy = dict(_DEPLOY_KEYS)
    for key, value in run_config.items():
        if key in deploy:
            deploy[key] = value
            continue
        section, dot, name = key.partition(".")
        if dot:
            values.setdefault(section, {})[name] = value
        else:
            values[key] = value
    config = from_dict(values)
    _check_protocol(config)
    return config, deploy


def _check_protocol(config: RunConfig) -> None:
    protocol = resolve(config).protocol
    if not protocol.deployable:
        raise PrivmedError(f"protocol {protocol.name} does not run on a Flower deployment: {protocol.deploy_refusal}")
    if parse_faults(config.faults).active:
        raise PrivmedError(
            "fault injection (faults=...) is in-process only; on a deployment, stop or kill a SuperNode instead"
        )


def write_app(
    app_dir: str | Path,
    config: RunConfig,
    *,
    result_dir: str | Path,
    wait_nodes_s: float = 120.0,
    reply_timeout_s: float = 600.0,
    resume: bool = False,
    site_names: Sequence[str] = (),
) -> Path:
    """Write the ``pyproject.toml`` that ``flwr run <app_dir> <superlink>`` needs; ``config`` is its default run config.

    The app bundle holds only this file: the ServerApp and ClientApp are
    imported from the installed privmed, and SuperLink and SuperNodes must be
    started with runtime dependency installation off.
    """
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "privmed-deploy"',
        'version = "1.0.0"',
        'description = "privmed ServerApp and ClientApp"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "privmed"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "privmed.engine.deploy:server_app"',
        'clientapp = "privmed.engine.deploy:client_app"',
        "",
        "[tool.flwr.app.config]",
    ]
    deploy = run_config_of(
        config,
        result_dir=result_dir,
        wait_nodes_s=wait_nodes_s,
        reply_timeout_s=reply_timeout_s,
        resume=resume,
        site_names=site_names,
    )
    for key, value in deploy.items():
        lines.append(f'"{key}" = {_toml_value(key, value)}')
    path = Path(app_dir) / "pyproject.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    raise PrivmedError(
        f"config key {key!r} has a {type(value).__name__} value; a Flower run config holds only int, float, bool and "
        "str"
    )


# ----------------------------------------------------------------------------- ServerApp

server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    config, deploy = config_of(context.run_config)
    if not deploy[RESULT_DIR]:
        raise PrivmedError(f"run config key {RESULT_DIR!r} is empty; set it to the directory for result.json")
    run_dir = Path(deploy[RESULT_DIR])
    result = serve(
        grid,
        config,
        wait_nodes_s=float(deploy[WAIT_NODES]),
        reply_timeout_s=float(deploy[REPLY_TIMEOUT]),
        checkpoint_dir=run_dir,
        resume=bool(deploy[RESUME]),
        site_names=[n for n in str(deploy[SITE_NAMES]).split(",") if n],
    )
    result.save(run_dir)
    Checkpoint(run_dir / "checkpoint.pt").discard()


def serve(
    grid: Grid,
    config: RunConfig,
    *,
    wait_nodes_s: float = 120.0,
    reply_timeout_s: float = 600.0,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    site_names: Sequence[str] = (),
) -> RunResult:
    """The coordinator's side of :func:`privmed.run.execute`, on any Flower Grid: the same session, monitor,
    checkpoint and result; the sites are numbered by name (:class:`SiteGrid`).

    With ``checkpoint_dir`` every round is checkpointed there; ``resume`` continues from it (the coordinator was
    killed: at most the round in progress is lost).
    """
    set_threads()
    started, cpu_start = time.perf_counter(), time.process_time()
    ckpt = Checkpoint(Path(checkpoint_dir) / "checkpoint.pt") if checkpoint_dir else None
    if resume and ckpt is None:
        raise PrivmedError("resume needs the run's result directory (its checkpoint)")
    saved = ckpt.load(config) if resume else None
    sites = SiteGrid(grid, reply_timeout_s=reply_timeout_s)
    sites.join(config.data.sites, wait_nodes_s, names=site_names)
    # what the coordinator knows of the sites' data: their own description (sizes, shape, classes), no images
    answers = sites.ask(ConfigRecord({DESCRIBE: 1}))
    described = {k: v if isinstance(v, str) else v.content["config"] for k, v in answers.items()}
    fed = federation_of(described, config)
    if resolve(config).mechanism.name != "none":  # each site's copy of the mechanism plans with every site's sizes
        told = sites.ask(ConfigRecord({ROSTER: roster_of(described)}))
        failed = {k: v for k, v in told.items() if isinstance(v, str)}
        if failed:
            raise PrivmedError(
                f"site {next(iter(failed))} did not take the run's roster: {next(iter(failed.values()))}"
            )
    mech_state = Checkpoint.mechanism_state(saved) if saved else None
    session = assemble(config, fed=fed, grid=sites, mechanism_state=mech_state)
    monitor = Monitor(session, started=started, checkpoint=ckpt)
    session.ctx.evaluate_fn = monitor
    if saved:
        monitor.prior_wall = Checkpoint.restore(saved, session, monitor)
    with contextlib.closing(session.mechanism):
        output = session.protocol.run(session.ctx)
    output.predictor = session.reveal(output.predictor)
    result = build_result(session, output, monitor, cpu_start=cpu_start, engine="flower-deployment")
    result.reliability.update(sites=sites.sites, events=sites.events, resumed_from_round=saved["round"] if saved else 0)
    return result


# ----------------------------------------------------------------------------- ClientApp

client_app = ClientApp(mods=[as_addressed])


DATA = "data"  # node config: the site's own data set (a spec, privmed.data.registry.site_data_spec); none: phantom


@lru_cache(maxsize=4)
def _own_data(
    run_config: tuple[tuple[str, Any], ...], data: str, partition_id: int, site: str
) -> tuple[Federation, int]:
    """What a site holds, as the federation it is part of, and its index there: its own files (``data``), a
    federation of itself alone; else the run's phantom, whose site ``partition_id`` it serves (demos, tests)."""
    config, _ = config_of(dict(run_config))
    if data and not data.startswith("phantom"):
        d = config.data
        return load_site(data, name=site, seed=config.seed, image_size=d.image_size, n_classes=d.n_classes), 0
    fed = build_federation(config.data, config.seed)
    if not 0 <= partition_id < len(fed.sites):
        raise PrivmedError(
            f"partition-id {partition_id} out of range: this federation has sites 0..{len(fed.sites) - 1}"
        )
    return fed, partition_id


@lru_cache(maxsize=4)
def _site_app(
    run_config: tuple[tuple[str, Any], ...],
    partition_id: int,
    site: str,
    policy: str,
    data: str,
    index: int,
    roster: str = "",
) -> ClientApp:
    """The site's own ClientApp, built once per process for a run config and its data (and the site's policy);
    ``index``: the site's position in the run (its name's rank), as the coordinator addresses it; ``roster``: every
    site's description, as the coordinator sent it (:func:`privmed.engine.describe.with_own_data`)."""
    set_threads()
    config, _ = config_of(dict(run_config))
    try:
        config = _as_policy_allows(config, site, policy)
    except PrivmedError as exc:  # refused: every message of the run gets the reason
        return _refusing_app(str(exc))
    fed, own = _own_data(run_config, data, partition_id, site)
    r = resolve(config)
    if roster:  # its own files: the others as the coordinator described them, for the mechanism's plan
        fed, own = with_own_data(roster, fed.sites[own], config)
        index = own
    elif partition_id < 0 and r.mechanism.name != "none":
        return _refusing_app(
            f"{site} refuses: the coordinator sent no roster of the run's sites for {r.mechanism.name}"
        )
    try:
        r.mechanism.at_site()  # this SuperNode is one site: shared keys from the sites' files
        r.mechanism.check(plan_of(config, fed, r))  # as assemble does: DP calibrates (and checks a ledger), ...
    except PrivmedError as exc:
        return _refusing_app(f"{site} refuses: {exc}")
    mine = fed.sites[own]
    return make_client_app(
        mine,
        model_spec(config, fed),
        site_index=index,
        mods=[*r.mechanism.client_mods(index), *protocol_site_mods(r, index, config, mine)],
        trainer=r.mechanism.trainer(index),
    )


def _as_policy_allows(config: RunConfig, site: str, policy_path: str) -> RunConfig:
    """``config`` with the site's own ledger applied, or a PrivmedError naming the policy rule it breaks."""
    if not policy_path:
        return config
    from dataclasses import replace

    from privmed.privacy.accounted import AccountedMechanism

    policy = load_policy(policy_path)
    r = resolve(config)
    dp = isinstance(r.mechanism, AccountedMechanism)
    problem = policy_problem(
        policy,
        site=site,
        protocol=r.protocol.name,
        mechanism=r.mechanism.name,
        dp=dp,
        epsilon=config.privacy.get("epsilon"),
    )
    if problem:
        raise PrivmedError(problem)
    return replace(config, privacy=site_privacy(policy, config.privacy, dp=dp))


def _refusing_app(reason: str) -> ClientApp:
    app = ClientApp()

    def refuse(msg: Message, context: Context) -> Message:
        raise PrivmedError(reason)

    app.train()(refuse)
    app.evaluate()(refuse)
    return app


def _delegate(msg: Message, context: Context) -> Message:
    nc = context.node_config
    data, partition = _data_of(nc)
    # a site's own files: its index is its place in the run, as the coordinator addressed it (privmed-node)
    index = partition if partition >= 0 else msg.metadata.dst_node_id - FIRST_NODE_ID
    roster = context.state.config_records.get(ROSTER)
    app = _site_app(tuple(sorted(context.run_config.items())), partition, site_name(nc), str(nc.get("policy", "")),
                    data, index, str(roster["sites"]) if roster and partition < 0 else "")  # fmt: skip
    return app(msg, context)


def _data_of(node_config: Mapping[str, Any]) -> tuple[str, int]:
    """The site's data spec and phantom partition (-1: none) from its node config."""
    data = str(node_config.get(DATA, ""))
    if "partition-id" in node_config:
        return data, int(node_config["partition-id"])
    if not data or data.startswith("phantom"):
        raise PrivmedError(
            "this SuperNode names no data; start it with `privmed site --data PATH` (or --node-config "
            '"partition-id=<site number>" for the phantom)'
        )
    return data, -1


def site_name(node_config: Mapping[str, Any]) -> str:
    """The name a site answers to: ``site-name`` from its node config, else ``site-<partition-id>`` (the phantom's)."""
    if "site-name" in node_config:
        return str(node_config["site-name"])
    if "partition-id" in node_config:
        return f"site-{int(node_config['partition-id'])}"
    raise PrivmedError(
        'this SuperNode has no site-name; start it with `privmed site` (or --node-config "site-name=...")'
    )


def _query(msg: Message, context: Context) -> Message:
    """The coordinator's set-up questions: the site's name (:data:`IDENTIFY`), its data's description
    (:data:`~privmed.engine.describe.DESCRIBE`: sizes, shape, classes; :mod:`privmed.engine.describe`)."""
    asked, nc = msg.content.config_records.get("config", {}), context.node_config
    if DESCRIBE in asked:
        data, partition = _data_of(nc)
        fed, own = _own_data(tuple(sorted(context.run_config.items())), data, partition, site_name(nc))
        answer = describe(fed, fed.sites[own], name=site_name(nc))
    elif ROSTER in asked:  # kept in Flower's node state, which the run's later messages find
        context.state.config_records[ROSTER] = ConfigRecord({"sites": str(asked[ROSTER])})
        answer = ConfigRecord({"site": site_name(nc)})
    elif IDENTIFY in asked:
        answer = ConfigRecord({"site": site_name(nc)})
    else:
        raise PrivmedError("unknown query; a privmed site answers the coordinator's identify and describe queries")
    return Message(RecordDict({"config": answer}), reply_to=msg)


client_app.train()(_delegate)
client_app.evaluate()(_delegate)
client_app.query()(_query)
