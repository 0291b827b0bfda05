"""Scenario sizes: small in the suite, full size when ``bench/soak.py`` runs the same tests.

A pytest plugin (loaded by ``tests/conftest.py``): ``--soak '{"slow_clients": 1000}'`` overrides
the sizes the ``sizes`` fixture hands to the hardening and fault tests, so a soak runs the
very tests of the suite, with their fixtures, ``caplog`` and assertions, only bigger.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Sizes:
    slow_clients: int = 200  # clients reading beside one stalled client
    slow_rounds: int = 1  # reading+stalled window pairs
    flood_seconds: float = 60.0  # a cap when flood_connections is set
    flood_connections: int | None = 2000  # per flood process; None: flood for flood_seconds
    flood_processes: int = 1
    flood_rate: float | None = None  # None: closed loop, as fast as the server goes
    leak_ticks: int = 1000  # faulted collector ticks


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", default="{}", metavar="JSON",
        help=f"scenario sizes to override (bench/soak.py), among {list(Sizes.__annotations__)}",
    )  # fmt: skip


@pytest.fixture(scope="session")
def sizes(request: pytest.FixtureRequest) -> Sizes:
    return dataclasses.replace(Sizes(), **json.loads(request.config.getoption("--soak")))
