"""Strict, typed options: a dict a user typed -> a frozen dataclass, or one clear error.

Protocols and privacy mechanisms each declare their options as a frozen
dataclass with annotated fields (``float``, ``int``, ``str``, ``bool``,
``X | None``). :func:`parse_options` refuses a key the dataclass does not
have (naming the valid keys and their types) and a value of the wrong type
(``theta_u=abc``), before anything trains. Hand-written because dataclasses
do not check types and pydantic would add a second validation style beside
the ``__post_init__`` checks every config already has.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from privmed.errors import PrivmedError

T = TypeVar("T")


def accepts(kind: Any, value: Any) -> bool:
    if kind is Any:
        return True
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(accepts(k, value) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def type_name(kind: Any) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(type_name(k) for k in typing.get_args(kind))
    return "none" if kind is type(None) else getattr(kind, "__name__", str(kind))


def option_types(cls: type) -> dict[str, Any]:
    """Field name -> annotated type of an options dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def describe(cls: type) -> str:
    """``theta_u (float), selection (str)`` — the valid keys and their types, for error messages and help."""
    return ", ".join(f"{k} ({type_name(t)})" for k, t in option_types(cls).items()) or "none"


def parse_options(cls: type[T], values: dict[str, Any], *, owner: str) -> T:
    """``cls(**values)`` after checking every key and type; ``owner`` names whose options they are in errors."""
    kinds = option_types(cls)
    for key, value in values.items():
        if key not in kinds:
            raise PrivmedError(f"unknown option {key!r} for {owner}; valid options: {describe(cls)}")
        if not accepts(kinds[key], value):
            raise PrivmedError(
                f"option {key!r} for {owner} must be {type_name(kinds[key])}, got {value!r}; "
                f"valid options: {describe(cls)}"
            )
    return cls(**{k: _coerce(kinds[k], v) for k, v in values.items()})


def _coerce(kind: Any, value: Any) -> Any:
    """An int given for a float field becomes a float (TOML and ``--opt gamma=1`` give ints)."""
    if isinstance(value, int) and not isinstance(value, bool) and accepts(kind, 0.5) and not accepts(kind, 1):
        return float(value)
    return value


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every protocol's options dataclass (frozen; fields checked in ``__post_init__``)."""

    def check_sites(self, n_sites: int) -> None:
        """Refuse values that do not fit a federation of ``n_sites`` (a site index, a threshold)."""


@dataclasses.dataclass(frozen=True)
class NoOptions(Options):
    """The options of a protocol that takes none."""
