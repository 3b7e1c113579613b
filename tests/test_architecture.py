"""The habits that keep the architecture as it is: read from the source, so a regression fails here."""

import ast
import dataclasses
import pathlib
import sys

import pytest

from privmed.config import RunConfig
from privmed.engine.session import resolve
from privmed.errors import PrivmedError
from privmed.options import NoOptions, Options
from privmed.protocols.base import ProtocolSpec
from privmed.protocols.registry import PROTOCOLS

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "privmed"


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _runtime_imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """privmed modules ``path`` imports when it runs (anywhere in it, lazy imports too; not ``if TYPE_CHECKING:``
    blocks)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("privmed"):
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n in modules}
    return out


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_config_registries_and_run_are_in_no_import_cycle():
    modules = _modules()
    graph = {m: _runtime_imports(p, modules) - {m} for m, p in modules.items()}
    core = {
        "privmed.config",
        "privmed.protocols.registry",
        "privmed.privacy.registry",
        "privmed.run",
        "privmed.engine.session",
        "privmed.cli",
        "privmed.bench.suite",
    }
    tangled = [sorted(c) for c in _cycles(graph) if c & core]
    assert not tangled, tangled
    # config is the schema only: its type checks are options' (a leaf: it imports only errors)
    assert graph["privmed.config"] <= {"privmed.errors", "privmed.options"}, "config is the schema only"
    assert graph["privmed.options"] <= {"privmed.errors"}


PROTOCOL_NAMES = set(PROTOCOLS)


def _compares_a_protocol_name(node: ast.Compare) -> bool:
    """``x == "cwt"``, ``"cwt" != x``, ``x in ("swt", "cwt")``: a literal protocol name on either side of a
    comparison."""
    for side in (node.left, *node.comparators):
        consts = [side] if isinstance(side, ast.Constant) else list(getattr(side, "elts", []))
        if any(isinstance(c, ast.Constant) and c.value in PROTOCOL_NAMES for c in consts):
            return True
    return False


def test_no_protocol_name_is_compared_outside_the_protocols_package():
    """What a protocol is lives in its spec: nothing else branches on its name."""
    offenders = []
    for name, path in _modules().items():
        if name.startswith("privmed.protocols"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and _compares_a_protocol_name(node):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders


def test_no_private_helper_is_imported_across_modules():
    offenders = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("privmed"):
                offenders += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not offenders, offenders


@pytest.mark.parametrize("name", sorted(PROTOCOL_NAMES))
def test_every_protocol_is_declared_once_with_typed_options(name):
    spec = PROTOCOLS[name]
    assert isinstance(spec, ProtocolSpec) and spec.name == name
    assert dataclasses.is_dataclass(spec.options) and issubclass(spec.options, Options)
    defaults = resolve(RunConfig(protocol=name, privacy=_mechanism_for(name)))
    assert isinstance(defaults.options, spec.options)  # the defaults are valid options
    if spec.options is not NoOptions:
        with pytest.raises(PrivmedError, match=f"unknown option 'nope' for protocol {name}; valid options: "):
            resolve(RunConfig(protocol=name, options={"nope": 1}, privacy=_mechanism_for(name)))


def _mechanism_for(protocol: str) -> dict:
    """A mechanism the protocol works with (the encrypted protocols need their site half)."""
    from privmed.privacy.registry import MECHANISMS, make_mechanism

    for mech in MECHANISMS:
        try:
            declared = make_mechanism({"mechanism": mech})
        except PrivmedError:  # needs parameters (DP): fits any protocol anyway, or FedAvg
            continue
        if protocol in (declared.protocols or ()):
            return {"mechanism": mech}
    return {}


def test_mechanisms_declare_the_protocols_they_fit():
    with pytest.raises(PrivmedError, match="use it with --protocol fedavg, not cwt"):
        resolve(RunConfig(protocol="cwt", privacy={"mechanism": "dp-fedavg", "epsilon": 3.0}))
    assert (
        resolve(RunConfig(protocol="cwt", privacy={"mechanism": "dp-sgd", "epsilon": 3.0})).mechanism.protocols is None
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"theta_u": "abc"}, "option 'theta_u' for protocol dssgd must be float, got 'abc'"),
        ({"theta_u": True}, "option 'theta_u' for protocol dssgd must be float, got True"),
        ({"gamma": "1"}, "option 'gamma' for protocol dssgd must be float or none"),
        ({"theta_u": 2.0}, "theta_u and theta_d must be in"),
    ],
)
def test_protocol_options_are_type_checked_then_validated(options, message):
    with pytest.raises(PrivmedError, match=message):
        resolve(RunConfig(protocol="dssgd", options=options))


def test_an_int_is_a_valid_float_option():
    assert resolve(RunConfig(protocol="dssgd", options={"theta_u": 1, "gamma": 1})).options.gamma == 1.0
