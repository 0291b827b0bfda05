"""The import rule of docs/architecture.md, read from the source: layers point one way.

Every ``import`` counts, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (they never run). A forbidden import fails here by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quartsig"

#: Layer of each module, lowest first; a module may import only from its own layer or below.
LAYERS: dict[str, int] = {
    # values, then pure rules and the plugins (docs/architecture.md has the table)
    "model": 0, "timeframes": 0, "columns": 0, "expiring": 0, "ratelimit": 0, "config": 0,
    "caps": 0, "sessions": 0, "budget": 0, "earlyfetch": 0,
    "symbols": 1, "rules": 1, "profiles": 1, "protocol": 1, "planner": 1, "tokens": 1,
    "logs": 1, "hookspecs": 1, "isolation": 1, "builtins": 2, "plugins": 2,
    # the in-process core and the stores, then the clients
    "hub": 3, "connection": 3, "metrics": 3, "admission": 3, "proxies": 3, "scanner": 4,
    "accounts": 3, "database": 3, "demo": 4, "testing": 10,
    # the seam and what drives it
    "broker": 5, "composer": 6, "collector": 6,
    # the state, its routes, and the wiring
    "runtime": 7, "api": 8, "stream": 8, "board": 8, "hosting": 8, "app": 9, "server": 10,
    "cli": 11, "__init__": 2, "__main__": 12,
}
PURE = {"model", "timeframes", "columns", "expiring", "ratelimit", "symbols", "rules",
        "profiles", "protocol", "planner", "hub", "caps", "sessions", "budget",
        "earlyfetch"}
FRAMEWORKS = {"aiohttp", "aiohttp_socks", "quart", "hypercorn", "tortoise", "redis", "wsproto"}
ROUTES = {"api", "stream", "board"}


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _top(module: str) -> str:
    """``quartsig.broker.redis`` -> ``broker``; ``quartsig`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports at run time."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            if base in {"quartsig", "quartsig.broker"}:  # from quartsig import hub, ...
                found.update(f"{base}.{alias.name}" for alias in node.names
                             if (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/")
                                 ).with_suffix(".py").exists())
    return found


def project_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        names = imports_of(path)
        graph[_module_of(path)] = {name for name in names
                                   if name.startswith("quartsig.") and name != "quartsig"}
    return graph


def test_every_module_has_a_layer():
    missing = {_top(module) for module in project_graph()} - LAYERS.keys()
    assert not missing, f"give these modules a layer in LAYERS: {sorted(missing)}"


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        here = _top(module)
        for target in targets:
            there = _top(target)
            if here == there:
                continue
            if LAYERS[there] > LAYERS[here]:
                found.append(f"{module} imports {target} (layer {LAYERS[there]} > {LAYERS[here]})")
            if here in ROUTES and there == "app":
                found.append(f"route module {module} imports the wiring {target}")
            if here == "hub" and there in {"scanner", "broker", "collector"}:
                found.append(f"the hub imports {target}")
    return sorted(found)


def test_imports_point_down_the_layers():
    assert violations(project_graph()) == []


def test_the_rule_fails_on_a_forbidden_import():
    graph = project_graph()
    graph["quartsig.hub"] = {*graph["quartsig.hub"], "quartsig.scanner"}
    graph["quartsig.model"] = {"quartsig.app"}
    found = violations(graph)
    assert any("quartsig.hub imports quartsig.scanner" in line for line in found)
    assert any("quartsig.model imports quartsig.app" in line for line in found)


@pytest.mark.parametrize("name", sorted(PURE))
def test_pure_modules_load_no_framework(name: str):
    path = PACKAGE / f"{name}.py"
    frameworks = {n.split(".")[0] for n in imports_of(path)} & FRAMEWORKS
    assert not frameworks, f"{name} imports {sorted(frameworks)}"


def test_model_imports_nothing_of_quartsig():
    assert {n for n in imports_of(PACKAGE / "model.py") if n.startswith("quartsig")} == set()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle between modules (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    graph = {name: {t for t in targets if t != name} for name, targets in project_graph().items()}
    # A package's __init__ naming its own submodules is how a package works, not a cycle.
    for name in graph:
        if name.count(".") == 1 and (PACKAGE / name.split(".")[1]).is_dir():
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    assert cycles(graph) == []


def test_the_cycle_check_finds_one():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
