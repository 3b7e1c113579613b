"""Run configuration: the schema only — frozen dataclasses, each field checked on construction.

TOML <-> dataclass conversion happens only here (the CLI edge). A key that
does not exist is an error naming the valid keys. Names (protocol, model,
task, privacy mechanism), protocol and mechanism options and their
compatibility are checked by :func:`privmed.engine.session.resolve`, which
knows the registries; this module imports none of them.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privmed.errors import PrivmedError


@dataclass(frozen=True)
class TrainSettings:
    rounds: int = 10
    local_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise PrivmedError("rounds, local epochs and batch size must be at least 1")
        if not self.lr > 0:
            raise PrivmedError(f"learning rate must be > 0, got {self.lr}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "phantom"  # "phantom" or "medmnist:<path to .npz>"
    sites: int = 4
    split: str = "natural"
    image_size: int = 32
    n_classes: int = 2
    shared_patient_fraction: float = 0.0
    patients_scale: int = 1  # phantom: multiplies every site's default patient count (60, 45, 30, 15 for four sites)

    def __post_init__(self) -> None:
        if self.sites < 1:
            raise PrivmedError(f"need at least 1 site, got {self.sites}")
        if not isinstance(self.patients_scale, int) or self.patients_scale < 1:
            raise PrivmedError(f"patients_scale must be an integer >= 1, got {self.patients_scale!r}")
        if self.patients_scale != 1 and not self.dataset.startswith("phantom"):
            raise PrivmedError(f"patients_scale applies to the phantom only; {self.dataset!r} has the patients it has")


@dataclass(frozen=True)
class RunConfig:
    protocol: str = "fedavg"
    model: str = "cnn"
    task: str = "classification"
    seed: int = 0
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    options: dict[str, Any] = field(default_factory=dict)  # protocol options, e.g. order, site
    privacy: dict[str, Any] = field(default_factory=dict)  # {"mechanism": name, **its parameters}
    faults: str = ""  # in-process fault injection, e.g. "crash=0.3,straggle=0.2:5s,drop=0.1" (engine/faults.py)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.protocol}-{self.data.split.replace(':', '')}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PrivmedError(
            f"unknown config key {where}{unknown[0]!r}; valid "
            f"keys{' in [' + where.rstrip('.') + ']' if where else ''}: {', '.join(fields)}"
        )
    return values


def from_dict(values: dict[str, Any]) -> RunConfig:
    values = dict(_build(RunConfig, values, ""))
    if "data" in values:
        values["data"] = DataConfig(**_build(DataConfig, dict(values["data"]), "data."))
    if "train" in values:
        values["train"] = TrainSettings(**_build(TrainSettings, dict(values["train"]), "train."))
    try:
        return RunConfig(**values)
    except TypeError as exc:
        raise PrivmedError(f"bad config value: {exc}") from None


def load_toml(path: str | Path) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise PrivmedError(f"config file {p} does not exist")
    try:
        values = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PrivmedError(f"config file {p} is not valid TOML: {exc}") from None
    return from_dict(values)


def replace(config: RunConfig, **changes: Any) -> RunConfig:
    """A copy of ``config`` with top-level, ``data.`` or ``train.`` fields changed (None = keep)."""
    top, data, train = {}, {}, {}
    for k, v in changes.items():
        if v is None:
            continue
        if k.startswith("data."):
            data[k[5:]] = v
        elif k.startswith("train."):
            train[k[6:]] = v
        else:
            top[k] = v
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, **data),
        train=dataclasses.replace(config.train, **train),
        **top,
    )
