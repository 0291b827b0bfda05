"""The benchmarks are not run by the suite (they print figures, on purpose by hand), but they
must keep up with the package: a module that moved once broke `bench.planner` unnoticed until
someone ran it. Each is imported, and its command line parsed with ``--help``."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import bench
from tests.support.processes import REPO

MODULES = sorted(info.name for info in pkgutil.iter_modules(bench.__path__)
                 if not info.ispkg and not info.name.startswith("_"))


def test_there_are_benchmarks() -> None:
    assert {"fanout", "latency", "memory", "planner", "tick", "cluster"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_each_benchmark_imports_and_parses_its_command_line(name: str) -> None:
    importlib.import_module(f"bench.{name}")
    if name == "clients":  # a worker process of the others, driven over a pipe
        return
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


#: What the test extra adds beyond the bench extra; a benchmark must import without any of it.
TEST_ONLY = ("pytest", "_pytest", "pytest_asyncio", "pytest_timeout", "hypothesis", "playwright")


def test_every_benchmark_imports_without_the_test_extra() -> None:
    """A clean clone installed with ``.[bench]`` has no pytest: bench imported ``tests.support``,
    which imported it, and ``python -m bench.fanout --help`` failed there. Blocking the modules in
    ``sys.modules`` makes any import of them raise, as their absence would."""
    blocked = "".join(f"sys.modules[{name!r}] = None\n" for name in TEST_ONLY)
    imports = "".join(f"importlib.import_module('bench.{name}')\n" for name in MODULES)
    done = subprocess.run([sys.executable, "-c", f"import importlib, sys\n{blocked}{imports}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
