"""No circle in the project's import graph: vision_node/, benchmarks/, build_engines.py and tests/.

Every module is parsed with ``ast`` (nothing is imported), and every import in it counts, a
function's own included: a circle closed by an import deferred into a function still means two
modules that each need the other, and is one edit away from failing at import time. An edge goes to
the module an import names: ``from pkg import name`` to ``pkg.name`` when that is a module, to
``pkg`` otherwise.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("vision_node", "benchmarks", "tests", "build_engines.py")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every project module by its dotted name (a package by its own name, for its ``__init__``)."""
    files = {}
    for source in SOURCES:
        paths = [root / source] if source.endswith(".py") else sorted((root / source).rglob("*.py"))
        paths = [path for path in paths if path.is_file()]
        for path in paths:
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` starts from."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports, anywhere in its body."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
    return {target for target in targets if target in known and target != module}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    return {module: imported(module, path, set(files)) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan), as a path.

    A component's other circles are there too; breaking the one named shows the next.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(_circle(graph, set(component)))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def _circle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(graph[module] & component):
                if target == start:
                    return paths[module] + [start]
                if target not in paths:
                    paths[target] = paths[module] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no circle in {sorted(component)}")


def test_the_checker_finds_a_circle_and_names_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_the_checker_resolves_relative_and_function_level_imports(tmp_path):
    (tmp_path / "vision_node" / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (tmp_path / "vision_node" / name).write_text("")
    (tmp_path / "vision_node" / "a.py").write_text("def f():\n    from .sub import b\n")
    (tmp_path / "vision_node" / "sub" / "b.py").write_text("from .. import a\nfrom ..sub import thing\n")
    graph = import_graph(tmp_path)
    assert graph["vision_node.a"] == {"vision_node.sub.b"}
    assert graph["vision_node.sub.b"] == {"vision_node.a", "vision_node.sub"}
    assert cycles(graph) == [["vision_node.a", "vision_node.sub.b", "vision_node.a"]]


def test_no_circle_in_the_import_graph():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(circle) for circle in found)


# The layers, top to bottom: http/ does HTTP only; serving/ answers (sessions, backends, engines); below
# it the capabilities, runtimes and media. What http/ may reach below serving/ is the capabilities'
# contract (capabilities.base: outputs, options, media types), the Content-Type, and the shared contract.
_HTTP_MAY_NOT_IMPORT = (
    "vision_node.capabilities.",  # but .base, the contract
    "vision_node.runtime",
    "vision_node.serving.session",
    "vision_node.media.frames",
    "vision_node.media.maps",
    "vision_node.media.png",
    "vision_node.streams",
    "vision_node.builder",
)
_HTTP_MAY_IMPORT = ("vision_node.capabilities.base",)


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that cross the layers: http/ into what serving/ owns, or anything below http/ into it."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if (
                module.startswith("vision_node.http")
                and target.startswith(_HTTP_MAY_NOT_IMPORT)
                and target not in _HTTP_MAY_IMPORT
            ):
                found.append(f"{module} -> {target} (http/ does HTTP; serving/ owns this)")
            below = module.startswith("vision_node.") and not module.startswith(("vision_node.http", "vision_node.cli"))
            if below and target.startswith("vision_node.http"):
                found.append(f"{module} -> {target} (a lower layer reaching up into http/)")
    return found


def test_the_layering_check_names_a_crossing():
    graph = {
        "vision_node.http.x": {"vision_node.runtime.tensorrt", "vision_node.capabilities.base"},
        "vision_node.serving.node": {"vision_node.http.app"},
    }
    assert layering_violations(graph) == [
        "vision_node.http.x -> vision_node.runtime.tensorrt (http/ does HTTP; serving/ owns this)",
        "vision_node.serving.node -> vision_node.http.app (a lower layer reaching up into http/)",
    ]


def test_http_knows_no_capability_runtime_or_session_internals():
    found = layering_violations(import_graph())
    assert not found, "layering:\n" + "\n".join(found)
