"""The static checks CI runs with the tests: architecture contracts (import-linter), lint (ruff)
and types (mypy --strict), each configured in pyproject.toml, and no import cycle anywhere.

Each tool runs as a subprocess from the repository root, as a developer would run it; a
failure shows the tool's own report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PACKAGES = ("shared", "services", "bench")

CHECKS = {
    # services never import each other, shared never imports services, no sibling cycles
    "import-linter": [str(BIN / "lint-imports"), "--no-cache"],
    "ruff": [sys.executable, "-m", "ruff", "check", "--no-cache", *PACKAGES, "tests"],
    # strict, over the files pyproject.toml's [tool.mypy] names
    "mypy": [sys.executable, "-m", "mypy"],
}


@pytest.mark.parametrize("tool", CHECKS)
def test_static_check_passes(tool: str, tmp_path: Path) -> None:
    command = CHECKS[tool] + (["--cache-dir", str(tmp_path)] if tool == "mypy" else [])
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    exit_code = done.returncode
    assert exit_code == 0, f"{' '.join(command)} exited {exit_code}:\n{done.stdout}\n{done.stderr}"


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every set of modules that import one another, directly or not (Tarjan's strongly
    connected components), each sorted; modules on no cycle are left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_import_cycles_are_found() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.b", "a.c", "a.d"):
        graph.add_module(module)
    graph.add_import(importer="a.b", imported="a.c")
    graph.add_import(importer="a.c", imported="a.b")
    graph.add_import(importer="a.d", imported="a.b")
    assert import_cycles(graph) == [["a.b", "a.c"]]


def test_no_module_imports_itself_through_others() -> None:
    # Function-level imports count too: a cycle through a late import is still a cycle.
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert import_cycles(graph) == []
