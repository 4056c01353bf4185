#!/usr/bin/env python3
"""Import cycles and layer violations in dmbackup/ (static: every module parsed with ``ast``).

    python3 scripts/check-imports.py [--graph] [--deferred] [ROOT]

Builds the graph of absolute ``dmbackup.*`` imports (relative ones are resolved too). An
import inside a function is a *deferred* edge: it runs later, but it is still a dependency,
so it counts for cycles and layers like any other and is marked ``deferred`` where it is
printed. Imports under ``if TYPE_CHECKING:`` never run and are left out.

``from P import x`` is an edge to the module ``P.x`` when there is one (and P's
``__init__`` does not define ``x`` itself), else to ``P``. Importing ``P.x`` also runs
``P/__init__.py``; that implicit edge is not drawn, or every package whose ``__init__``
re-exports its submodules would be a cycle with each of them.

Prints every cycle (each strongly connected component of more than one module, with one
concrete loop through it and the edges that make it up) and every violation of the layers
below, then exits 1 if there was any (0 otherwise). ``--graph`` also prints every edge,
``--deferred`` every deferred import.

Layers (read off the package; a lower layer never imports a higher one):

    dmbackup.__main__                  the entry point: the only importer of cli/ outside it
    cli/                               typer commands; the only code that imports typer, click, rich
    daemon/                            scheduler, jobs, status, monitoring
    engine/                            the operations
    archive/ source/ system/ targets/ mailout/   format, the machine's data, OS helpers, media
    quickstart/                        the demo: imported by nothing in the product
    top-level modules                  config, context, errors, log, utctime, ...: shared by
                                       all, they import no engine/, daemon/ or cli/
"""

from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass

PKG = "dmbackup"
UI_LIBS = ("typer", "click", "rich")

# (importer prefix, forbidden prefix, why): a module matching the first may not import the second
RULES: list[tuple[str, str, str]] = []
for low in ("archive", "source", "system", "targets", "mailout"):
    for high in ("engine", "daemon", "cli"):
        RULES.append((f"{PKG}.{low}", f"{PKG}.{high}", f"{low}/ must not import {high}/"))
RULES += [
    (f"{PKG}.engine", f"{PKG}.daemon", "engine/ must not import daemon/"),
    (f"{PKG}.engine", f"{PKG}.cli", "engine/ must not import cli/"),
    (f"{PKG}.daemon", f"{PKG}.cli", "daemon/ must not import cli/"),
]


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    deferred: bool


def module_name(root: str, path: str) -> str:
    rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def find_modules(root: str) -> dict[str, str]:
    """Module name -> file, for every .py under ROOT/dmbackup."""
    out = {}
    for dp, dns, fns in os.walk(os.path.join(root, PKG)):
        dns[:] = sorted(d for d in dns if d != "__pycache__")
        for fn in sorted(fns):
            if fn.endswith(".py"):
                p = os.path.join(dp, fn)
                out[module_name(root, p)] = p
    return out


def top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds itself at top level (def, class, assignment), not by import."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports(tree: ast.Module):
    """(node, deferred) for every import statement that can run."""
    def visit(node, deferred):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for n in child.orelse:
                    yield from visit_stmt(n, deferred)
                continue
            yield from visit_stmt(child, deferred)

    def visit_stmt(child, deferred):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, deferred
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from visit(child, True)
        else:
            yield from visit(child, deferred)

    yield from visit(tree, False)


class Graph:
    def __init__(self, root: str):
        self.root = root
        self.files = find_modules(root)
        self.trees = {m: ast.parse(open(p, "rb").read(), p) for m, p in self.files.items()}
        self.defined = {m: top_level_names(t) for m, t in self.trees.items()}
        self.edges: list[Edge] = []
        self.ui: list[tuple[str, str, int, bool]] = []       # (module, library, line, deferred)
        for m, tree in self.trees.items():
            for node, deferred in imports(tree):
                for dst in self._targets(m, node):
                    if dst.split(".")[0] in UI_LIBS:
                        self.ui.append((m, dst, node.lineno, deferred))
                    elif dst in self.files and dst != m:
                        self.edges.append(Edge(m, dst, node.lineno, deferred))
        self.edges = list(dict.fromkeys(self.edges))     # `from P import a, b`: one edge per line

    def _package_of(self, m: str) -> str:
        return m if os.path.basename(self.files[m]) == "__init__.py" else m.rpartition(".")[0]

    def _targets(self, m: str, node) -> list[str]:
        if isinstance(node, ast.Import):
            out = []
            for a in node.names:
                name = a.name
                while name and name not in self.files and name.split(".")[0] == PKG:
                    name = name.rpartition(".")[0]          # import dmbackup.x.attr (not a module)
                out.append(name or a.name)
            return out
        if node.level:
            base = self._package_of(m)
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = f"{base}.{node.module}" if node.module else base
        else:
            mod = node.module or ""
        if mod.split(".")[0] != PKG:
            return [mod]
        out = []
        for a in node.names:
            sub = f"{mod}.{a.name}"
            if sub in self.files and a.name not in self.defined.get(mod, set()):
                out.append(sub)
            else:
                out.append(mod)
        return out

    def adjacency(self) -> dict[str, set[str]]:
        adj: dict[str, set[str]] = {m: set() for m in self.files}
        for e in self.edges:
            adj[e.src].add(e.dst)
        return adj


def strongly_connected(adj: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in a stable order."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in sorted(adj):
        if start in index:
            continue
        work = [(start, iter(sorted(adj[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(adj[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return sorted(out, key=lambda c: (-len(c), c))


def one_loop(comp: list[str], adj: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    members = set(comp)
    start = comp[0]
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(adj[v] & members):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def violations(g: Graph) -> list[str]:
    out = []

    def under(m: str, prefix: str) -> bool:
        return m == prefix or m.startswith(prefix + ".")

    def where(line: int, deferred: bool) -> str:
        return f"line {line}{', deferred' if deferred else ''}"

    def shared(m: str) -> bool:        # a top-level module: dmbackup/config.py, errors.py, ...
        return m.count(".") == 1 and m != f"{PKG}.__main__" and not g.files[m].endswith("__init__.py")

    for e in sorted(g.edges, key=lambda e: (e.src, e.dst, e.line)):
        for src, dst, why in RULES:
            if under(e.src, src) and under(e.dst, dst):
                out.append(f"{e.src} -> {e.dst} ({where(e.line, e.deferred)}): {why}")
        for high in ("engine", "daemon", "cli"):
            if shared(e.src) and under(e.dst, f"{PKG}.{high}"):
                out.append(f"{e.src} -> {e.dst} ({where(e.line, e.deferred)}): "
                           f"a top-level module must not import {high}/")
        if under(e.dst, f"{PKG}.cli") and not under(e.src, f"{PKG}.cli") and e.src != f"{PKG}.__main__":
            out.append(f"{e.src} -> {e.dst} ({where(e.line, e.deferred)}): only dmbackup.__main__ imports cli/")
        if under(e.dst, f"{PKG}.quickstart") and not under(e.src, f"{PKG}.quickstart"):
            out.append(f"{e.src} -> {e.dst} ({where(e.line, e.deferred)}): nothing in the product imports quickstart/")
    for m, lib, line, deferred in sorted(g.ui):
        if not under(m, f"{PKG}.cli"):
            out.append(f"{m} imports {lib} ({where(line, deferred)}): only cli/ imports {'/'.join(UI_LIBS)}")
    return list(dict.fromkeys(out))


def main(argv: list[str]) -> int:
    show_graph = "--graph" in argv
    show_deferred = "--deferred" in argv
    args = [a for a in argv if not a.startswith("--")]
    root = os.path.abspath(args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    g = Graph(root)
    adj = g.adjacency()
    deferred = [e for e in g.edges if e.deferred]
    print(f"{len(g.files)} modules, {len(g.edges)} import edges ({len(deferred)} deferred)")
    if show_graph:
        print("\nedges:")
        for e in sorted(g.edges, key=lambda e: (e.src, e.dst, e.line)):
            print(f"  {e.src} -> {e.dst} (line {e.line}{', deferred' if e.deferred else ''})")
    if show_deferred:
        print("\ndeferred imports (inside functions):")
        for e in sorted(deferred, key=lambda e: (e.src, e.line)):
            print(f"  {e.src} -> {e.dst} (line {e.line})")

    cycles = [c for c in strongly_connected(adj) if len(c) > 1]
    print(f"\ncycles: {len(cycles)}")
    for i, comp in enumerate(cycles, 1):
        print(f"  {i}. {len(comp)} modules: {', '.join(comp)}")
        print(f"     e.g. {' -> '.join(one_loop(comp, adj))}")
        members = set(comp)
        for e in sorted(g.edges, key=lambda e: (e.src, e.dst, e.line)):
            if e.src in members and e.dst in members:
                print(f"       {e.src} -> {e.dst} (line {e.line}{', deferred' if e.deferred else ''})")
    bad = violations(g)
    print(f"\nlayer violations: {len(bad)}")
    for v in bad:
        print(f"  {v}")
    return 1 if cycles or bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
