"""Health that says whether a node can serve (issue #24.2): ``/livez``, ``/readyz``, ``/healthz``.

The rules are pure (:mod:`quartsig.ops.health`); the routes run in Quart's test app with the
real feed (a memory broker, or a Redis broker aimed at a port nobody listens on).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from quart import Quart

from quartsig.app import FeedComponent, create_app, state_of
from quartsig.config import Settings
from quartsig.domain.model import Batch
from quartsig.ops import health
from tests.support.net import eventually, free_port
from tests.support.standin import serve_standin

WAIT = 30.0


def test_stale_after_covers_slow_ticks_and_a_lease_handover() -> None:
    assert health.stale_after(20.0, 3.0, clustered=False) == 60.0
    assert health.stale_after(20.0, 3.0, clustered=True) == 66.0


def test_failures_name_each_check_with_why_and_report_lists_every_check() -> None:
    found = health.failures(redis="unreachable", data_age=70.0, stale_after=66.0,
                            failing=["collector", "changes"])
    assert found == {"redis": "Redis unreachable",
                     "data": "no publication for 70 s (stale after 66 s)",
                     "tasks": "failing: collector, changes"}
    assert health.report({"data": "x"}) == {
        "checks": {"redis": "ok", "data": "x", "tasks": "ok"}, "failing": ["data"]}
    assert health.failures(redis="ok", data_age=1.0, stale_after=66.0, failing=[]) == {}
    assert health.degraded_reason({}) is None
    assert health.degraded_reason({"tasks": "t", "redis": "r"}) == "r; t"


def _settings(tmp_path: Path, scanner_url: str, **changes: Any) -> Settings:
    return Settings.from_env({}, data_dir=tmp_path, scanner_url=scanner_url, interval=1.0,
                             secret_keys=(Fernet.generate_key().decode(),), **changes)


@pytest.fixture
async def scanner() -> AsyncIterator[str]:
    runner, url = await serve_standin("127.0.0.1", 0, seed=3)
    try:
        yield url
    finally:
        await runner.cleanup()


async def _get(app: Quart, path: str) -> tuple[int, dict[str, Any]]:
    response = await app.test_client().get(path)
    return response.status_code, await response.get_json()


async def test_a_database_outage_leaves_the_node_ready_but_healthz_names_it(
        tmp_path: Path, scanner: str) -> None:
    # No database component: as if the database were down the whole time.
    app = create_app(_settings(tmp_path, scanner), components=[FeedComponent()])
    async with app.test_app():
        assert await _get(app, "/livez") == (200, {"status": "ok"})
        status, body = await _get(app, "/readyz")
        assert (status, body["status"], body["failing"]) == (200, "ok", [])
        status, body = await _get(app, "/healthz")
        assert (status, body["status"], body["database"]) == (503, "error", "unreachable")
        assert body["failing"] == ["database"]
        assert body["checks"]["database"] == "database unreachable"


async def test_unreachable_redis_makes_the_node_unready_and_healthz_says_why(
        tmp_path: Path, scanner: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(_settings(tmp_path, scanner, redis_url=dead), components=[FeedComponent()])
    async with app.test_app():
        async def unready() -> bool:
            return (await _get(app, "/readyz"))[0] == 503

        await eventually(unready, WAIT, what="/readyz 503")
        _, body = await _get(app, "/readyz")
        assert body["failing"][0] == "redis"
        assert body["checks"]["redis"] == "Redis unreachable"
        status, body = await _get(app, "/healthz")
        assert (status, body["role"], body["redis"]) == (503, "follower", "unreachable")
        assert "redis" in body["failing"]


async def test_clients_hear_degraded_while_data_is_stale_and_the_upstream_status_after(
        tmp_path: Path, scanner: str) -> None:
    app = create_app(_settings(tmp_path, scanner), components=[FeedComponent()])
    async with app.test_app():
        state = state_of(app)
        await eventually(lambda: state.collector is not None and state.collector.ticks >= 1,
                         WAIT, what="a first tick")
        state.collector.stop()  # a frozen collector: nothing is published any more
        state.published_at = time.monotonic() - 10.0  # three intervals are 3 s
        state.review_health()
        assert state.hub.status[0] == "degraded"
        assert state.hub.status[1].startswith("no publication for 10 s")
        status, body = await _get(app, "/readyz")
        assert (status, body["failing"]) == (503, ["data"])
        assert state.metrics.registry.get_sample_value("quartsig_data_age_seconds") >= 10.0

        state.apply(Batch(status=None))  # a publication arrives: fresh again
        state.review_health()
        assert state.hub.status == ("ok", "")
        assert (await _get(app, "/readyz"))[0] == 200


async def test_an_upstream_outage_is_not_overwritten_by_the_staleness_notice(
        tmp_path: Path, scanner: str) -> None:
    app = create_app(_settings(tmp_path, scanner), components=[FeedComponent()])
    async with app.test_app():
        state = state_of(app)
        assert state.collector is not None
        state.collector.stop()
        state.apply(Batch(status=("degraded", "TradingView unreachable")))
        state.published_at = time.monotonic() - 10.0
        state.review_health()
        assert state.hub.status == ("degraded", "TradingView unreachable")
