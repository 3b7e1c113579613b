"""Run configuration: the schema only — frozen dataclasses, each field checked on construction.

TOML <-> dataclass conversion happens only here (the CLI edge). A key that
does not exist is an error naming the valid keys. Names (protocol, model,
task, privacy mechanism), protocol and mechanism options and their
compatibility are checked by :func:`privmed.engine.session.resolve`, which
knows the registries; this module imports none of them.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privmed.errors import PrivmedError
from privmed.options import accepts, option_types, type_name

SEED_LIMIT = 2**32  # NumPy's and Python's global generators take seeds below 2**32
IMAGE_SIZES = (8, 512)  # pixels per side; the phantom draws its images in memory
RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_run_name(name: str) -> str:
    """A run name is a folder name under the runs folder: letters, digits, ``.``, ``_``, ``-``; not ``.`` or ``..``."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise PrivmedError(
            f"run name {name!r} is not a plain folder name: use letters, digits, '.', '_' and '-' only "
            "(no '/', not '.' or '..'); the run is written under --runs-dir"
        )
    return name


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


@dataclass(frozen=True)
class TrainSettings:
    rounds: int = 50  # past the validation plateau of the default phantom (v2) for centralised, FedAvg and CWT
    local_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    # the coordinator rejects an update whose norm exceeds norm_ratio x a reference norm (engine/validate.py)
    norm_ratio: float = 100.0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise PrivmedError("rounds, local epochs and batch size must be at least 1")
        if not self.lr > 0:
            raise PrivmedError(f"learning rate must be > 0, got {self.lr}")
        if not self.norm_ratio > 1:
            raise PrivmedError(f"norm_ratio (bound on update norms, x a reference) must be > 1, got {self.norm_ratio}")


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
        low, high = IMAGE_SIZES
        if not low <= self.image_size <= high:
            # the default phantom: 4 images of each of 150 x patients_scale development and 280 held-out test patients
            scale = self.patients_scale if isinstance(self.patients_scale, int) and self.patients_scale > 0 else 1
            n = 4 * (150 * scale + 280)
            raise PrivmedError(
                f"image_size must be from {low} to {high} pixels, got {self.image_size}: one "
                f"{self.image_size}x{self.image_size} image takes {_gib(4 * self.image_size**2)} as float32, the "
                f"phantom's {n} images {_gib(4 * n * self.image_size**2)}, before the network's activations"
            )
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
    # DP noise and sampling derived from the run seed (tests, debugging): the result is then marked not private
    reproducible_noise: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.seed < SEED_LIMIT:
            raise PrivmedError(f"seed must be from 0 to 2**32 - 1 ({SEED_LIMIT - 1}), got {self.seed}")
        if self.name:
            check_run_name(self.name)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.protocol}-{self.data.split.replace(':', '')}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: Any, where: str) -> Any:
    """``values`` checked against ``cls``'s fields: known keys, and values of the declared types (TOML gives any)."""
    if not isinstance(values, dict):
        raise PrivmedError(f"config key {where.rstrip('.')!r} must be a table ([{where.rstrip('.')}]), got {values!r}")
    kinds = option_types(cls)
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise PrivmedError(
            f"unknown config key {where}{unknown[0]!r}; valid "
            f"keys{' in [' + where.rstrip('.') + ']' if where else ''}: {', '.join(kinds)}"
        )
    for key, value in values.items():
        kind = kinds[key]
        table = dataclasses.is_dataclass(kind) or typing.get_origin(kind) is dict
        if table and not isinstance(value, dict) or not table and not accepts(kind, value):
            wanted = "a table" if table else type_name(kind)
            raise PrivmedError(f"config key {where}{key} must be {wanted}, got {value!r}")
    return values


def from_dict(values: dict[str, Any]) -> RunConfig:
    values = dict(_build(RunConfig, values, ""))
    if "data" in values:
        values["data"] = DataConfig(**_build(DataConfig, values["data"], "data."))
    if "train" in values:
        values["train"] = TrainSettings(**_build(TrainSettings, values["train"], "train."))
    try:
        return RunConfig(**values)
    except TypeError as exc:
        raise PrivmedError(f"bad config value: {exc}") from None


def read_toml(path: str | Path, *, what: str) -> dict[str, Any]:
    """A TOML file's table; a missing or malformed file is one PrivmedError naming ``what`` and the file."""
    p = Path(path)
    if not p.is_file():
        raise PrivmedError(f"{what} {p} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PrivmedError(f"{what} {p} is not valid TOML: {exc}") from None


def load_toml(path: str | Path) -> RunConfig:
    return from_dict(read_toml(path, what="config file"))


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
