"""docs/plugins.md's walk-through and packaged example, extracted and exercised as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from quartsig.plugins.loader import get_plugin_manager, inventory

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "plugins.md").read_text()


def block(marker: str, language: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```{language}\n(.*?)```", DOCS, re.DOTALL)
    assert match, f"docs/plugins.md lost its {marker} block"
    return textwrap.dedent(match.group(1))


def test_the_first_plugin_walk_through_runs_as_written(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "momentum.py").write_text(block("first-plugin", "python"))
    (plugins / "test_momentum.py").write_text(block("first-plugin-test", "python"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARTSIG_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-o", "asyncio_mode=auto", "-p", "no:cacheprovider",
         "plugins/test_momentum.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout

    listed = subprocess.run([sys.executable, "-m", "quartsig", "plugins"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "plugins/momentum.py (file plugins/momentum.py)" in listed.stdout.splitlines()


def test_the_packaged_example_loads_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyproject = tomllib.loads(block("packaged-pyproject", "toml"))
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"
    assert pyproject["build-system"]["requires"]
    project = pyproject["project"]
    [(name, module)] = project["entry-points"]["quartsig"].items()
    assert f"src/{module}/__init__.py" in DOCS  # the layout shown holds that module
    # Installed as pip would lay it out: the module and its dist-info with the entry point.
    (tmp_path / f"{module}.py").write_text(block("first-plugin", "python"))
    info = tmp_path / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    (info / "entry_points.txt").write_text(f"[quartsig]\n{name} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = {info.name: info for info in inventory(get_plugin_manager())}
        assert found[name].source == f"package {project['name']} {project['version']}"
        assert [p.name for p in found[name].profiles] == ["momentum"]
        # The doc's test of a packaged plugin, as written.
        scope: dict[str, object] = {}
        snippet = re.search(r"### Testing a packaged plugin.*?```python\n(.*?)```", DOCS,
                            re.DOTALL)
        assert snippet
        exec(compile(snippet.group(1), "docs/plugins.md", "exec"), scope)
        for test in [v for k, v in scope.items() if k.startswith("test_")]:
            test()  # type: ignore[operator]
    finally:
        sys.modules.pop(module, None)
