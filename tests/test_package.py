"""Tests of the package's shape: no import cycles, no borrowed private names, no import effects."""

import ast
import pathlib

from tests.helpers import run_python

PACKAGE = pathlib.Path(__file__).parent.parent / "fcn_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, modules: set[str]) -> list[tuple[str, str]]:
    """(fcn_jax module, name or '') pairs that an import statement reads."""
    if isinstance(node, ast.Import):
        return [(a.name, "") for a in node.names if a.name in modules]
    found = []
    for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        if submodule in modules:
            found.append((submodule, ""))
        elif node.module in modules:
            found.append((node.module, alias.name))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the fcn_jax modules it imports at module level."""
    modules = _modules()
    names = set(modules)
    graph = {}
    for name, tree in modules.items():
        edges = set()
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= {module for module, _ in _imported(node, names)}
        # A package's modules import the package's __init__ first: not a dependency of it.
        graph[name] = {m for m in edges if not name.startswith(m + ".")}
    return graph


def test_graph_sees_the_model_package():
    graph = _graph()
    assert "fcn_jax.models.common" in graph["fcn_jax.models.reference"]
    assert "fcn_jax.models.reference" in graph["fcn_jax.models"]


def test_no_import_cycles():
    graph = _graph()
    done, path = set(), []

    def visit(module: str) -> None:
        assert module not in path, "import cycle: " + " -> ".join([*path, module])
        if module in done:
            return
        path.append(module)
        for dependency in sorted(graph[module]):
            visit(dependency)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_no_module_reads_another_modules_private_names_or_imports_inside_functions():
    modules = _modules()
    names = set(modules)
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for module, imported in _imported(node, names):
                    assert not imported.startswith("_"), f"{name} imports {module}.{imported}"
            if isinstance(node, ast.FunctionDef):
                inner = [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
                assert not any(_imported(n, names) for n in inner), f"{name}.{node.name}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                value = node.value
                if isinstance(value, ast.Name) and f"fcn_jax.{value.id}" in names:
                    raise AssertionError(f"{name} reads {value.id}.{node.attr}")


def test_importing_changes_no_environment_and_checks_need_no_tensorflow():
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import fcn_jax, fcn_jax.config_checks, fcn_jax.predict, fcn_jax.models\n"
        "assert dict(os.environ) == before\n"
        "print(os.environ.get('XLA_FLAGS'))\n"
        "print(sorted(m for m in sys.modules if m.startswith('tensorflow')))\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["None", "[]"]
