"""The shape of the imports: no cycle among runtime/ modules, and client commands that
start without trio, lmdb or the runtime itself.

Cycles are found from the source (ast), counting every import wherever it sits: at
the top, inside a function, under TYPE_CHECKING. A lazy import still ties two
modules together; hiding a cycle in a function does not remove it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_proc import ROOT, RuntimeProc, agent_block, write_config

Graph = dict[str, set[str]]

# Each is an edge of a known cycle that the ports work (issue 13, the wiring branch)
# removes: methods.py and maintain/online.py import runtime.app for the Runtime type.

# What a client command must never import: the event loop, the LMDB binding, and
# the runtime's own parts (which bring both).
HEAVY = ("trio", "lmdb", "runtime.supervisor", "runtime.app", "runtime.store.store")


# -- the import graph ------------------------------------------------------------------


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root`: dotted name -> file."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod; `from mod import x`, mod.
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                            else base)
    return {t for t in targets if t in modules and t != name}


def import_graph(root: Path, package: str) -> Graph:
    files = module_files(root, package)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_back(graph, group) for group in groups]


def _path_back(graph: Graph, group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{group} is not strongly connected")


def describe(found: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in found)


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    import pkg.a\n")
    (pkg / "sub" / "c.py").write_text("from ..sub import d\n")
    (pkg / "sub" / "d.py").write_text("import os\nfrom pkg.sub.c import x\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub"] == {"pkg.sub.c"}
    assert sorted(cycles(graph)) == [["pkg.a", "pkg.b", "pkg.a"],
                                     ["pkg.sub.c", "pkg.sub.d", "pkg.sub.c"]]


def test_no_import_cycle_in_runtime() -> None:
    graph = import_graph(ROOT, "runtime")
    assert graph.get("runtime.cli.main")
    found = cycles(graph)
    assert not found, describe(found)


def private_imports(root: Path, package: str) -> list[str]:
    """`from x import _name` anywhere in `package`: reaching into another module's insides."""
    found = []
    for name, path in module_files(root, package).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                found += [f"{name}: from {'.' * node.level}{node.module or ''} import {a.name}"
                          for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg.b import _helper, __doc__\n")
    assert private_imports(tmp_path, "pkg") == ["pkg.a: from pkg.b import _helper"]
    assert private_imports(ROOT, "runtime") == []


# -- what a client command imports ------------------------------------------------------


def importtime(*argv: str, cwd: Path) -> tuple[subprocess.CompletedProcess, list[tuple[int, str]]]:
    """Run `outpost ARGV` under -X importtime: the result and (depth, module) per import,
    in the order Python reports them (a module after the ones it imported)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "runtime", *argv],
                            capture_output=True, text=True, timeout=120, cwd=cwd)
    tree = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            name = line.split("|", 2)[2]
            tree.append(((len(name) - len(name.lstrip())) // 2, name.strip()))
    assert tree, result.stderr  # -X importtime wrote its table
    return result, tree


def importers(tree: list[tuple[int, str]], i: int) -> Iterator[str]:
    """Who imported the module at `i`: its parent, that one's parent, and so on."""
    depth = tree[i][0]
    for d, name in tree[i + 1:]:
        if d < depth:
            depth = d
            yield name


def is_heavy(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in HEAVY)


def heavy_imports(tree: list[tuple[int, str]]) -> dict[str, list[str]]:
    """Each HEAVY module imported from outside the heavy ones (trio's own submodules
    are trio's business): the chain of modules that brought it in."""
    found = {}
    for i, (_, name) in enumerate(tree):
        chain = list(importers(tree, i))
        if is_heavy(name) and not any(is_heavy(n) for n in chain):
            found[name] = chain
    return found


def assert_light(argv: tuple[str, ...], tree: list[tuple[int, str]]) -> None:
    heavy = heavy_imports(tree)
    assert not heavy, f"`outpost {' '.join(argv)}` imported " + "; ".join(
        f"{name} (via {' <- '.join(chain)})" for name, chain in heavy.items())


NOBODY = "nobody-listens/outpost.sock"


@pytest.mark.parametrize("argv", [
    ("status", "--json"), ("status", "worker"), ("state", "get", "worker", "k"),
    ("state", "set", "worker", "k", "1"), ("state", "delete", "worker", "k"),
    ("send", "worker", "hi"), ("events",), ("events", "-f"), ("metrics",),
    ("metrics", "--json"), ("info",), ("stop",), ("agent", "restart", "worker"),
    ("reload",), ("checkpoint",), ("top", "-n", "1"),
], ids=" ".join)
def test_client_commands_import_no_trio_lmdb_or_runtime(argv: tuple[str, ...],
                                                         tmp_path: Path) -> None:
    result, tree = importtime(*argv, "--socket", str(tmp_path / NOBODY), cwd=tmp_path)
    assert result.returncode == 3, result.stderr  # nothing runs there: "not running"
    assert "outpost run" in result.stderr
    assert_light(argv, tree)


def test_the_check_sees_a_heavy_import(tmp_path: Path) -> None:
    result, tree = importtime("run", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert result.returncode == 2  # no such config; but `run` imported the runtime first
    heavy = heavy_imports(tree)
    assert {"trio", "runtime.app"} <= set(heavy), heavy  # lmdb comes inside runtime.app
    assert any(name == "lmdb" for _, name in tree)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProc]:
    counter = str(ROOT / "examples" / "agents" / "counter.py") + ":run"
    directory = tmp_path_factory.mktemp("imports")
    proc = RuntimeProc(write_config(directory, agent_block("worker", counter))).start()
    try:
        proc.wait_running("worker")
        yield proc
    finally:
        proc.cleanup()


@pytest.mark.parametrize("argv", [
    ("status", "--json"), ("metrics",), ("events", "--json"), ("state", "get", "worker"),
    ("top", "-n", "1", "--json"), ("maintain", "checkpoint", "--json"),
], ids=" ".join)
def test_commands_against_a_live_runtime_stay_light(argv: tuple[str, ...],
                                                    live: RuntimeProc) -> None:
    result, tree = importtime(*argv, "--config", str(live.config), cwd=live.config.parent)
    assert result.returncode == 0, result.stderr
    if argv[0] == "maintain":  # it asked the runtime, not the data dir
        assert json.loads(result.stdout)["where"] == "runtime"
    assert_light(argv, tree)
