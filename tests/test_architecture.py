"""The two wings: the library never imports the commands, no module imports itself in a circle, and
``import smmf`` loads neither command-line code nor an optional dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "smmf"


def _module_name(path: Path) -> str:
    parts = ["smmf", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The smmf modules ``path`` imports, at module level or inside functions, relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if node.module:  # `from . import x` imports module x, not (again) the package it is in
                found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _imports(p, modules) for p in paths}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a path that comes back to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _is_command(module: str) -> bool:
    """The commands wing: smmf.commands and ``python -m smmf`` (smmf/__main__.py), its entry point."""
    return module in ("smmf.commands", "smmf.__main__") or module.startswith("smmf.commands.")


def test_the_library_never_imports_the_commands() -> None:
    graph = _graph()
    assert any(_is_command(m) for m in graph)
    wrong = {m: sorted(filter(_is_command, deps)) for m, deps in graph.items() if not _is_command(m)}
    assert {m: deps for m, deps in wrong.items() if deps} == {}


def test_no_import_circle() -> None:
    """Every import counts, also one inside a function: a lazy import that closes a circle is still one."""
    assert _cycle(_graph()) is None


def test_import_smmf_loads_no_command_code_and_no_optional_dependency() -> None:
    code = (
        "import sys; import torch; before = set(sys.modules); import smmf; "
        "print(sorted(m for m in set(sys.modules) - before if not m.startswith('smmf.') or 'commands' in m))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    new = eval(proc.stdout)  # a list of module names
    optional = ("smmf.commands", "tqdm", "matplotlib", "transformers", "sklearn", "torchvision", "pytorch_optimizer")
    assert [m for m in new if m.startswith(optional)] == []
