"""The house has floors: kernels <- engine <- evals <- trainers, bench. A module imports only from its own floor or
below (bench may use trainers' benchmark ops; trainers never import bench), and no two modules import each other,
directly or through others, whether the import sits at the top of a file or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"kernels": 0, "engine": 1, "evals": 2, "trainers": 3, "bench": 3}


def _modules() -> dict[str, Path]:
    found = {}
    for package in FLOORS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules this file imports anywhere (top level or in a function), resolved to module names."""
    out = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                    else []))
            # `from pkg import sub` imports the module pkg.sub when there is one (a compiled extension such as
            # kernels._C has no Python imports to follow), else names from pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES or _extension(base, a.name) else base
                       for a in node.names]
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] in FLOORS and t in MODULES and t != name)
    return out


def _extension(package: str, name: str) -> bool:
    folder = REPO.joinpath(*package.split("."))
    return any(folder.glob(f"{name}.*.so")) or any(folder.glob(f"{name}.*.pyd"))


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_only(name):
    floor = FLOORS[name.split(".")[0]]
    for target in GRAPH[name]:
        top, own = target.split(".")[0], name.split(".")[0]
        assert FLOORS[top] <= floor, f"{name} (floor {own}) imports {target} from a floor above"
        assert not (own == "trainers" and top == "bench"), f"{name} imports {target}: trainers never import bench"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def test_the_checker_sees_imports_inside_functions():
    # a test that cannot fail is a defect: the graph must hold an import that only appears inside a function
    assert "kernels._triton.k_fused_linear" in GRAPH["kernels.fused_linear"]
    assert "engine.strategies" in GRAPH["trainers.trainer"]
