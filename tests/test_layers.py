"""The import graph of the project: layers, no circles, no private names across modules.

Every import is read from the source (module level and inside functions alike), so a lazy
import cannot hide a circle. The packages are layered, bottom first::

    pipelines  <  trainer  <  benchmarks, deploy

A module imports only modules of its own package or of a package below it, the modules
import one another without a circle, and no module takes a private name (`_x`) of
another, by `from m import _x` or by `m._x`.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAYERS = {"pipelines": 0, "trainer": 1, "benchmarks": 2, "deploy": 2}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, pathlib.Path]:
    modules = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


MODULES = project_modules()


def _resolve(name: str) -> str | None:
    """The project module that importing `name` runs last (None: not the project's)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) of every import in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    found.append((target, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, [], node.lineno))
                else:
                    target = _resolve(base)
                    if target:
                        found.append((target, [alias.name], node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    return {module: {target for target, _, _ in imports_of(module) if target != module}
            for module in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def test_the_walk_sees_lazy_and_relative_imports():
    lazy = "def f():\n    from trainer import task\n"
    tree = ast.parse(lazy)
    assert any(isinstance(node, ast.ImportFrom) for node in ast.walk(tree))
    assert _resolve("trainer.task.run") == "trainer.task"
    assert _resolve("numpy") is None
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    assert cycles(graph()) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_its_own_package_or_below(module):
    layer = LAYERS[module.split(".")[0]]
    upward = [(target, line) for target, _, line in imports_of(module)
              if LAYERS[target.split(".")[0]] > layer
              or (LAYERS[target.split(".")[0]] == layer
                  and target.split(".")[0] != module.split(".")[0])]
    assert not upward, f"{module} imports {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_of_another_module(module):
    private = [(target, name, line) for target, names, line in imports_of(module)
               for name in names if name.startswith("_") and not name.startswith("__")]
    tree = ast.parse(MODULES[module].read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                base = node.module or ""
                if f"{base}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in MODULES:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            private.append((aliases[node.value.id], node.attr, node.lineno))
    assert not private, f"{module} uses private names of other modules: {private}"
