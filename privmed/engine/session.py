"""One assembly: a run config becomes a ready session (grid, protocol context, model, node↔site map).

Every place that runs a protocol builds it here — the in-process run, the
Flower deployment, the poisoning and inversion probes of the audit, the
benchmarks and the tests — so the order of the steps, and the seeding of the
global generators that Flower draws from, cannot drift between them (after
breaching's ``construct_case``: one factory builds the whole case).

1. :func:`resolve` checks the names (protocol, model, task, mechanism), parses
   the protocol's options strictly into its options dataclass, and checks the
   protocol–mechanism pairing the mechanism declares (``Mechanism.protocols``).
2. :func:`assemble` seeds the global generators, builds the federation (or
   takes one), prepares the mechanism for the run's :class:`Plan`, builds one
   ClientApp per site (the mechanism's trainer and mods, the protocol's own site
   mod) on an :class:`InProcessGrid` (or takes Flower's Grid), and the
   :class:`ProtocolContext` the protocol's ``run`` receives.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid

from privmed.config import DataConfig, RunConfig
from privmed.data.base import Federation, SiteData
from privmed.engine.faults import FaultInjector, parse_faults
from privmed.engine.grid import InProcessGrid
from privmed.errors import PrivmedError
from privmed.options import parse_options
from privmed.privacy.base import Mechanism, Plan
from privmed.protocols.base import Predictor, ProtocolContext, ProtocolSpec
from privmed.site import ModelSpec, make_client_app

FIRST_NODE_ID = 2  # node 1 is the coordinator (Flower's SuperLink node id)


@dataclass(frozen=True)
class Resolved:
    """A config's names, checked: the protocol's spec and typed options, and a fresh (unprepared) mechanism."""

    protocol: ProtocolSpec
    options: Any
    mechanism: Mechanism


def resolve(config: RunConfig) -> Resolved:
    """Check every name and option of ``config`` and the protocol–mechanism pairing; PrivmedError naming the fix."""
    from privmed.models import model_task
    from privmed.privacy.registry import make_mechanism
    from privmed.protocols.registry import get_protocol
    from privmed.tasks import TASKS

    protocol = get_protocol(config.protocol)
    options = parse_options(protocol.options, dict(config.options), owner=f"protocol {protocol.name}")
    options.check_sites(config.data.sites)
    if config.task not in TASKS:
        raise PrivmedError(f"unknown task {config.task!r}; valid tasks: {', '.join(TASKS)}")
    if model_task(config.model) != config.task:
        raise PrivmedError(
            f"model {config.model!r} is for {model_task(config.model)}, not {config.task}; pick a {config.task} model"
        )
    parse_faults(config.faults)  # a bad fault spec is refused before anything runs
    mechanism = make_mechanism(config.privacy)
    if mechanism.protocols is not None and protocol.name not in mechanism.protocols:
        raise PrivmedError(
            f"{mechanism.name} {mechanism.purpose}; use it with --protocol {' or '.join(mechanism.protocols)}, "
            f"not {protocol.name}"
        )
    return Resolved(protocol, options, mechanism)


def seed_globals(seed: int) -> None:
    """Seed the global generators a run's library code draws from.

    Flower samples nodes with Python's ``random`` and SecAgg+'s stochastic
    rounding uses NumPy's global generator; privmed's own draws take explicit
    generators.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_federation(cfg: DataConfig, seed: int) -> Federation:
    from privmed.data.registry import load_federation

    # A generated data set has as many scanners as sites only for the natural
    # split; other splits redistribute the default phantom's patients.
    natural = cfg.split.split(":")[0] == "natural"
    return load_federation(
        cfg.dataset,
        seed=seed,
        sites=cfg.sites,
        split=cfg.split,
        scanners=cfg.sites if natural else DataConfig().sites,
        image_size=cfg.image_size,
        n_classes=cfg.n_classes,
        shared_patient_fraction=cfg.shared_patient_fraction,
        patients_scale=cfg.patients_scale,
    )


def model_spec(config: RunConfig, fed: Federation) -> ModelSpec:
    """The network every party builds: from the config's name and the data's channels and dimensions."""
    n_out = 2 if config.task == "segmentation" else fed.n_classes
    dims = len(fed.image_shape) - 1  # [C, H, W] -> 2, [C, D, H, W] -> 3
    return ModelSpec(config.model, in_channels=fed.image_shape[0], n_classes=n_out, task=config.task, spatial_dims=dims)


def parties(fed: Federation, protocol: ProtocolSpec) -> tuple[SiteData, ...]:
    """The parties that hold training data, as the harness builds them (a pooled protocol: one party with all of it)."""
    if protocol.pooled:
        return (SiteData("pooled", fed.pooled("train"), fed.pooled("val"), fed.pooled("test")),)
    return tuple(fed.sites)


def plan_of(config: RunConfig, fed: Federation, resolved: Resolved | None = None) -> Plan:
    """What a mechanism is told about the run: who trains, how many epochs, which model."""
    r = resolved or resolve(config)
    sites = parties(fed, r.protocol)
    trainers = set(r.protocol.trainers(r.options, len(sites)))
    budget = config.train.rounds * config.train.local_epochs
    return Plan(
        config=config,
        sites=tuple((s.name, s.train) for s in sites),
        epochs=tuple(budget if i in trainers else 0 for i in range(len(sites))),
        model=model_spec(config, fed),
    )


def protocol_site_mods(resolved: Resolved, site_index: int, config: RunConfig, site: SiteData) -> list[Mod]:
    """The protocol's own site half at one site (DSSGD's selective upload, split learning's client layers), or
    nothing."""
    spec = resolved.protocol
    if spec.site_mod is None:
        return []
    own = {"site": site} if spec.site_data else {}
    return [spec.site_mod(site_index, resolved.options, reproducible_noise=config.reproducible_noise, **own)]


def one_site_grid(site: SiteData, model: ModelSpec, *, mods: Sequence[Mod] = (), trainer: Any = None) -> InProcessGrid:
    """A grid holding one site at node :data:`FIRST_NODE_ID` (the audit's victim; a benchmark's lone site)."""
    return InProcessGrid({FIRST_NODE_ID: make_client_app(site, model, site_index=0, mods=mods, trainer=trainer)})


@dataclass
class Session:
    """A run ready to start: ``protocol.run(ctx)`` trains it."""

    config: RunConfig
    protocol: ProtocolSpec
    fed: Federation
    model: ModelSpec
    mechanism: Mechanism
    grid: Grid
    node_site: dict[int, str]  # in-process: node id -> site name (a deployment learns it as nodes join)
    site_memory: dict[int, dict]  # in-process: site index -> what the site keeps between messages (optimiser state)
    in_process: bool  # an InProcessGrid, which counts bytes and site seconds (Flower's deployed Grid does not)
    ctx: ProtocolContext
    n_parameters: int
    faults: FaultInjector | None = None  # in-process fault injection (config.faults), which records what it injected

    @property
    def rounds(self) -> int:
        """How many times the protocol calls back ``evaluate_fn``."""
        return self.protocol.rounds(self.config.train, len(parties(self.fed, self.protocol)))

    def reveal(self, predictor: Predictor) -> Predictor:
        """The model as the sites see it (decrypted): what the harness evaluates and saves."""
        return self.mechanism.reveal(predictor)


def assemble(
    config: RunConfig,
    *,
    fed: Federation | None = None,
    grid: Grid | None = None,
    mechanism_state: dict[str, Any] | None = None,
    fault: Callable | None = None,
    site_mods: dict[int, Sequence[Mod]] | None = None,
    evaluate_fn: Callable[[int, Predictor], dict] | None = None,
) -> Session:
    """Build the session for ``config``.

    ``fed``: a federation already built (the bench shares one; the poisoning
    probe passes a poisoned one). ``grid``: Flower's Grid in a deployment (no
    site apps are built here then). ``mechanism_state``: a resumed run's saved
    mechanism state, loaded before the mechanism's check so a budget check
    counts the interrupted spend once. ``fault``: the in-process grid's fault
    hook (tests; ``config.faults`` builds one, :mod:`privmed.engine.faults`).
    ``site_mods``: extra client mods per site index, innermost (next to the
    site's handlers: tests, attacks).
    """
    from privmed.models import n_parameters

    r = resolve(config)
    seed_globals(config.seed)
    fed = fed or build_federation(config.data, config.seed)
    model = model_spec(config, fed)
    mechanism = r.mechanism
    if grid is not None:  # a deployed coordinator: the sites' secrets stay at the sites
        mechanism.at_coordinator()
    if mechanism_state is not None:
        mechanism.load_state_dict(mechanism_state)
    mechanism.check(plan_of(config, fed, r))
    node_site: dict[int, str] = {}
    site_memory: dict[int, dict] = {}
    declared: dict[int, int] = {}  # what each site holds, as the coordinator knows it (a deployment: unknown)
    injector = None
    if grid is None:
        apps = {}
        for i, site in enumerate(parties(fed, r.protocol)):
            mods = [*mechanism.client_mods(i), *protocol_site_mods(r, i, config, site), *(site_mods or {}).get(i, [])]
            site_memory[i] = {}
            apps[FIRST_NODE_ID + i] = make_client_app(
                site, model, site_index=i, trainer=mechanism.trainer(i), mods=mods, memory=site_memory[i]
            )
            node_site[FIRST_NODE_ID + i] = site.name
            declared[FIRST_NODE_ID + i] = len(site.train)
        plan = parse_faults(config.faults)
        if plan.active:
            injector = FaultInjector(plan, config.seed, node_site)
        grid = InProcessGrid(apps, fault=fault or injector)
    initial = model.build(seed=config.seed)
    ctx = ProtocolContext(
        grid=grid,
        initial=ArrayRecord(initial.state_dict()),
        settings=config.train,
        seed=config.seed,
        evaluate_fn=evaluate_fn or (lambda rnd, predictor: {}),
        options=r.options,
        wrap_strategy=mechanism.wrap_strategy,
        reproducible_noise=config.reproducible_noise,
        declared=declared,
    )
    return Session(
        config=config,
        protocol=r.protocol,
        fed=fed,
        model=model,
        mechanism=mechanism,
        grid=grid,
        node_site=node_site,
        site_memory=site_memory,
        in_process=isinstance(grid, InProcessGrid),
        ctx=ctx,
        n_parameters=n_parameters(initial),
        faults=injector,
    )
