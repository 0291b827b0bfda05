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
