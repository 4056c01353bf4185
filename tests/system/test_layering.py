"""The targets and system layers import in one direction, without cycles.

``dmbackup.system`` is the machine (mounts, devices, libnfs, child processes) and knows nothing
of targets; ``dmbackup.targets`` builds on it. Every import counts, also one inside a function
(a lazy import is still a dependency); imports under ``if TYPE_CHECKING:`` do not.
"""

from __future__ import annotations

import ast
import os

import dmbackup

PACKAGE = os.path.dirname(dmbackup.__file__)
LAYERS = ("targets", "system")


def _imports() -> dict[str, set[str]]:
    mods = {}
    for layer in LAYERS:
        for fn in sorted(os.listdir(os.path.join(PACKAGE, layer))):
            if fn.endswith(".py"):
                mods[f"dmbackup.{layer}.{fn[:-3]}".removesuffix(".__init__")] = os.path.join(PACKAGE, layer, fn)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                node.body = []
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[mod] |= {n for n in names if n in mods and n != mod}
    return graph


def test_the_system_layer_never_imports_targets():
    graph = _imports()
    assert [(a, b) for a, deps in graph.items() for b in deps
            if a.startswith("dmbackup.system") and b.startswith("dmbackup.targets")] == []


def test_no_import_cycles_among_targets_and_system():
    graph = _imports()
    cycles = []

    def visit(mod, path):
        for dep in sorted(graph[mod]):
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(mod)

    done: set[str] = set()
    for mod in sorted(graph):
        if mod not in done:
            visit(mod, [mod])
    assert cycles == []
