"""The import rule of docs/architecture.md, read from the source: layers point one way.

Every ``import`` counts, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (they never run). A forbidden import fails here by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "quartsig"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def read_layers(text: str) -> dict[str, int]:
    """The layer of each folder and root module, from the table under "## Layers" in
    docs/architecture.md (rows ``| 2 | `plugins`, `upstream` | ... |``): the doc draws the
    picture and this test enforces it, so the two cannot disagree."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in cells[1].split(","):
                layers[name.strip().strip("`").removesuffix("/")] = int(cells[0])
    return layers


#: Layer of each folder (and of the few modules at the root), lowest first. A module imports
#: only from its own folder or from a lower layer, never from a sibling of the same layer.
LAYERS: dict[str, int] = read_layers(ARCHITECTURE.read_text())

#: Which folders (or root modules) may load each framework; nothing else may.
FRAMEWORK_HOMES: dict[str, set[str]] = {
    "aiohttp": {"upstream", "demo", "state", "telegram", "alerts"},
    "aiohttp_socks": {"upstream"},
    "aiogram": {"telegram"},
    "quart": {"web", "state", "app", "server", "testing", "telegram"},
    "hypercorn": {"hosting", "server"},
    "wsproto": {"hosting"},
    "tortoise": {"access", "state", "alerts"},
    "redis": {"cluster"},
}


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _top(module: str) -> str:
    """``quartsig.cluster.redis`` -> ``cluster``; ``quartsig.app`` -> ``app``;
    ``quartsig`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


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
            if base.startswith("quartsig"):  # from quartsig.fanout import hub
                found.update(f"{base}.{alias.name}" for alias in node.names
                             if _is_module(f"{base}.{alias.name}"))
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
    assert not missing, f"give these a layer in docs/architecture.md: {sorted(missing)}"


def test_the_layer_table_names_only_what_exists():
    assert LAYERS, "no layer table under '## Layers' in docs/architecture.md"
    gone = {name for name in LAYERS if not _is_module(f"quartsig.{name}")}
    assert not gone, f"docs/architecture.md gives a layer to {sorted(gone)}, which do not exist"


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        here = _top(module)
        for target in targets:
            there = _top(target)
            if here != there and LAYERS[there] >= LAYERS[here]:
                found.append(f"{module} imports {target} "
                             f"({there} is layer {LAYERS[there]}, {here} is {LAYERS[here]})")
    return sorted(found)


def test_imports_point_down_the_layers():
    assert violations(project_graph()) == []


def test_the_rule_fails_on_a_forbidden_import():
    graph = project_graph()
    graph["quartsig.fanout.hub"] = {*graph["quartsig.fanout.hub"], "quartsig.upstream.scanner"}
    graph["quartsig.domain.model"] = {"quartsig.app"}
    graph["quartsig.web.stream"] = {"quartsig.app"}
    found = violations(graph)
    assert any("quartsig.fanout.hub imports quartsig.upstream.scanner" in line for line in found)
    assert any("quartsig.domain.model imports quartsig.app" in line for line in found)
    assert any("quartsig.web.stream imports quartsig.app" in line for line in found)


def framework_violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _top(_module_of(path))
        for name in imports_of(path):
            root = name.split(".")[0]
            if root in FRAMEWORK_HOMES and here not in FRAMEWORK_HOMES[root]:
                found.append(f"{_module_of(path)} imports {name}")
    return found


def test_frameworks_stay_in_their_folders():
    assert framework_violations() == []


def test_the_domain_imports_nothing_of_quartsig_but_itself():
    for path in sorted((PACKAGE / "domain").glob("*.py")):
        outside = {n for n in imports_of(path)
                   if n.startswith("quartsig") and not n.startswith("quartsig.domain")}
        assert not outside, f"{_module_of(path)} imports {sorted(outside)}"


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


def test_a_process_without_a_bot_does_not_load_aiogram():
    """aiogram's types take seconds to build: the app and the command line load it only once a
    bot is made (quartsig.telegram.client), not for every process and every test server."""
    import subprocess
    import sys

    probe = "import sys, quartsig.cli, quartsig.app; print('aiogram' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, cwd=PACKAGE.parent)
    assert done.stdout.strip() == "False", done.stderr
