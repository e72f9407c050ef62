"""The import graph keeps design.md's table: no import runs back up the layers, none goes in a circle.

Every ``import`` in labctl/ counts, lazy ones inside functions and relative ones too; only imports
under ``if TYPE_CHECKING:`` (types, never run) do not. Each module belongs to the room of its longest
matching name below, and may import only the rooms listed for it (and its own room). ``labctl/analyse/``
is also held to "standard library only" (and the rendering library) for what it imports from outside.
"""
from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest

from labctl.backends import BACKENDS

PACKAGE = Path(__file__).resolve().parent.parent / "labctl"

STEPS = ("labctl.deploy", "labctl.run", "labctl.run_lead", "labctl.run_result", "labctl.capture",
         "labctl.capture_clock", "labctl.capture_home", "labctl.capture_result", "labctl.capture_signals",
         "labctl.tcpdump", "labctl.bringup", "labctl.shell", "labctl.impairment")
LAB = ("labctl.lab", "labctl.links", "labctl.programs")   # the lab as data (its links: and programs:)
BELOW_STEPS = ("labctl.errors", "labctl.statefiles", *LAB, "labctl.routes", "labctl.inventory",
               "labctl.safety", "labctl.remote", "labctl.remote_result", "labctl.remote_keys",
               "labctl.remote_process")
# room -> the rooms it may import, lowest first (design.md, "Rooms and what each may import")
ROOMS: dict[str, tuple[str, ...]] = {
    "labctl": (),                                   # the version
    "labctl.errors": (),
    "labctl.statefiles": ("labctl.errors",),       # the one safe writer of state dirs
    "labctl.lab": ("labctl.errors", "labctl.links", "labctl.programs"),
    "labctl.links": ("labctl.errors",),
    "labctl.programs": ("labctl.errors",),
    "labctl.routes": (),                            # this machine's routing table, stdlib only
    "labctl.inventory": ("labctl.errors", *LAB),
    "labctl.backends": ("labctl.errors", "labctl.statefiles", *LAB, "labctl.inventory", "labctl.routes"),
    "labctl.safety": ("labctl.errors", "labctl.inventory", "labctl.routes"),
    "labctl.remote": ("labctl.errors", "labctl.statefiles", "labctl.inventory", "labctl.safety",
                      "labctl.remote_result", "labctl.remote_keys", "labctl.remote_process"),
    "labctl.remote_result": ("labctl.errors",),          # Result, GroupResult, the remote errors
    "labctl.remote_keys": ("labctl.errors", "labctl.inventory", "labctl.remote_result"),  # pinned, 0600
    "labctl.remote_process": ("labctl.errors", "labctl.inventory", "labctl.safety"),  # a running channel
    # a step may read back what it captured through analyse/ (analyse never imports a step)
    **{step: (*BELOW_STEPS, *STEPS, "labctl.analyse") for step in STEPS},
    "labctl.choice": (*BELOW_STEPS, "labctl.backends"),   # which backend: above them, below the CLI
    "labctl.exercise": (*BELOW_STEPS, *STEPS, "labctl.analyse"),
    "labctl.analyse": ("labctl.errors",),
    "labctl.cli": ("labctl",),                      # everything above
    "labctl.__main__": ("labctl", "labctl.cli"),
}
# bringup, impairment and the exercise hand work to a backend: they know its interface, never a backend.
EXTRA = {name: ("labctl.backends.base",)
         for name in ("labctl.bringup", "labctl.impairment", "labctl.exercise")}
# Known imports against the table, being removed on another branch: (importer, imported). When one no
# longer occurs (or its module is gone), test_no_import_runs_up_the_layers says so: delete it here.
PENDING: set[tuple[str, str]] = set()
# What labctl/analyse/ may import from outside labctl besides the standard library (design.md: "stdlib
# (+ rendering libs)"): rich draws the terminal views.
ANALYSE_THIRD_PARTY = ("rich",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _absolute(node: ast.ImportFrom, name: str) -> str:
    """The module a ``from`` import names, relative ones (``from .links import x``) made absolute."""
    if not node.level:
        return node.module or ""
    package = name if MODULES.get(name, Path()).name == "__init__.py" else name.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[:len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def all_imports(source: str, name: str) -> frozenset[str]:
    """Every module the code of module ``name`` imports at run time (``from pkg import sub`` counts as
    importing ``pkg.sub`` where that is a labctl module)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        module = _absolute(node, name)
        if module == "__future__":
            continue
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            found.add(sub if sub in MODULES else module)
    found.discard(name)
    return frozenset(found)


@functools.cache
def imports_of(name: str) -> frozenset[str]:
    """The labctl modules ``name`` imports."""
    return frozenset(i for i in all_imports(MODULES[name].read_text(), name) if i.split(".")[0] == "labctl")


def outside_imports(name: str) -> set[str]:
    """The top-level packages outside labctl that module ``name`` imports."""
    return {i.split(".")[0] for i in all_imports(MODULES[name].read_text(), name)} - {"labctl"}


def backend_of(name: str) -> str | None:
    """The registered backend whose module (or package) ``name`` is part of; None for shared parts."""
    for backend, target in BACKENDS.items():
        module = target.split(":")[0]
        if name == module or name.startswith(module + "."):
            return backend
    return None


def room_of(name: str) -> str:
    return max((room for room in ROOMS if name == room or name.startswith(room + ".")), key=len)


def allowed(importer: str, imported: str) -> bool:
    room, target = room_of(importer), room_of(imported)
    if room == target and room != "labctl.backends":
        return True
    if room == target == "labctl.backends":  # itself and the shared parts (base, ...), never another backend
        other = backend_of(imported)
        return other is None or other == backend_of(importer)
    if room == "labctl.cli":
        return True
    return target in ROOMS[room] or imported in EXTRA.get(importer, ())


def test_every_module_has_a_room():
    """A module in no room of its own would fall into ``labctl``'s and import anything unlisted."""
    assert [name for name in MODULES if room_of(name) == "labctl" and name != "labctl"] == []


def test_no_import_runs_up_the_layers():
    upward = {(m, i) for m in MODULES for i in imports_of(m) if not allowed(m, i)}
    still_pending = {pair for pair in PENDING if pair[0] in MODULES and pair[1] in imports_of(pair[0])}
    assert upward - PENDING == set(), "imports against design.md's table"
    assert PENDING - (still_pending & upward) == set(), \
        "fixed (or allowed now): delete these from PENDING in tests/test_layers.py"


def test_no_import_goes_in_a_circle():
    graph = {m: imports_of(m) - {i for p, i in PENDING if p == m} for m in MODULES}
    circles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_backends_never_import_the_remote_layer_or_the_cli():
    for name in MODULES:
        if room_of(name) == "labctl.backends":
            assert not {i for i in imports_of(name) if room_of(i) in (
                "labctl.remote", "labctl.safety", "labctl.cli", *STEPS)}, name


def test_every_registered_backend_is_a_module_here():
    assert all(target.split(":")[0] in MODULES for target in BACKENDS.values())


def test_analyse_imports_only_the_standard_library_and_itself():
    """analyse/ reads captures and draws them: nothing of the steps, the lab, the backends or the CLI,
    and nothing from outside but the standard library and the rendering library."""
    for name in (m for m in MODULES if room_of(m) == "labctl.analyse"):
        assert {i for i in imports_of(name) if room_of(i) not in ("labctl.analyse", "labctl.errors")
                and i != "labctl"} == set(), name
        assert outside_imports(name) - set(sys.stdlib_module_names) - set(ANALYSE_THIRD_PARTY) == set(), name


@pytest.mark.parametrize("line", ["from labctl.links import parse_loss", "from labctl import links",
                                  "import labctl.links", "from .. import links", "from ..links import x",
                                  "def f():\n    from labctl.run import run"])
def test_the_check_sees_every_way_analyse_could_import_a_room_above(line):
    """The checker itself: each spelling of an upward import from analyse/tunnels.py is caught."""
    found = {i for i in all_imports(line, "labctl.analyse.tunnels") if i.split(".")[0] == "labctl"}
    assert found and not all(allowed("labctl.analyse.tunnels", i) for i in found), (line, found)


@pytest.mark.parametrize("line", ["from .linktypes import CUT", "from . import linktypes",
                                  "from labctl.analyse import linktypes", "import labctl.analyse.linktypes"])
def test_relative_and_package_imports_resolve_to_the_module(line):
    assert all_imports(line, "labctl.analyse.tunnels") == {"labctl.analyse.linktypes"}


def test_a_third_party_import_in_analyse_would_be_refused():
    found = all_imports("import yaml\nfrom paramiko import SSHClient", "labctl.analyse.x")
    assert found == {"yaml", "paramiko"}
    assert not {"yaml", "paramiko"} <= set(sys.stdlib_module_names) | set(ANALYSE_THIRD_PARTY)
