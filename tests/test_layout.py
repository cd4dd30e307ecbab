"""The package's layout rules (longgen_core/ARCHITECTURE.md): no import circles, not even through
imports inside functions, and no private name imported from another module."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "longgen_core"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (ast.parse(path.read_text()), path.name == "__init__.py")
    return out


def _relative_imports(name: str, tree: ast.Module, is_package: bool):
    """``(imported module, imported names)`` of every relative import, anywhere in the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            yield ".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, (tree, is_package) in modules.items():
        for target, names in _relative_imports(name, tree, is_package):
            for candidate in [target, *(f"{target}.{n}" for n in names)]:
                # a module importing its own package's __init__ is not a circle of modules
                if candidate in modules and candidate != name and not name.startswith(candidate + "."):
                    graph[name].add(candidate)
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a list of modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_circle_finder_finds_a_circle():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None


def test_no_modules_import_each_other_in_a_circle():
    graph = _graph()
    assert "longgen_core.data.corpora" in graph["longgen_core.data.tasks"]  # the graph sees imports
    assert _circle(graph) is None


def test_no_private_name_is_imported_from_another_module():
    crossing = [(name, target, n) for name, (tree, pkg) in _modules().items()
                for target, names in _relative_imports(name, tree, pkg) for n in names
                if n.startswith("_") and n != "__version__"]
    assert crossing == []
