"""Where code lives: the import graph of runner/ and vmimage/, read with ``ast`` (nothing is imported).

Edges counted: every ``import x`` / ``from x import y`` anywhere in a module — at module level *and* inside
functions (lazy imports) — resolved to the module of this tree it names (``from pkg import mod`` counts as
an edge to ``pkg.mod`` when that is a module, else to ``pkg``). Imports under ``if TYPE_CHECKING:`` are not
counted: they never run. A lazy import still makes a loop: it only postpones it.

Checks: no import loops; the guest-side code (shipped into the VM, stdlib only) imports nothing host-side and
nothing outside the standard library; no function over 80 lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = ("runner", "vmimage")
# Shipped into the guest / run by the engine on any Linux: standard library and these modules only.
GUEST_SIDE = ("runner.engine", "runner.images", "runner.agent.server", "runner.agent.protocol", "runner.stdio",
              "runner.procs", "runner.errors", "runner.records", "runner.spec")
HOST_ONLY = ("runner.backends", "runner.vm", "runner.cli", "runner.api", "runner.bench", "vmimage")
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported name, line) for every import that runs, resolved against this tree where possible."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    found.append((sub if sub in MODULES else child.module, child.lineno))
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = set()
        for target, _ in _imports(path):
            while target and target not in MODULES:  # ``import runner.vm.layout`` -> that module
                target = target.rpartition(".")[0]
            if target and target != name and not _is_package_of(target, name):
                edges.add(target)
        graph[name] = edges
    return graph


def _is_package_of(package: str, module: str) -> bool:
    """A module importing its own package runs only the package's ``__init__``: not a loop back to itself."""
    return module.startswith(package + ".") and MODULES[package].name == "__init__.py"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_loops():
    assert _cycles(_graph()) == []


def test_guest_side_imports_only_the_standard_library_and_guest_side_modules():
    # Modules of newer Pythons, imported guarded: compression.zstd (3.14+), _sha2 (3.12+, once _sha256).
    stdlib = sys.stdlib_module_names | {"compression", "_sha2"}
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(GUEST_SIDE):
            continue
        for target, line in _imports(path):
            top = target.split(".")[0]
            if target.startswith(HOST_ONLY) or (top not in stdlib and top not in ("runner",)):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert bad == []


def test_no_function_over_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert long == []
