"""The alerts' long-lived tasks run under the supervisor: a fault that escapes the delivery
worker's own error handling is logged, counted and the worker restarted; the recorder's
writer and rule watcher are supervised tasks too."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from quart import Quart

from quartsig.app import (
    DELIVERIES,
    AlertsComponent,
    DatabaseComponent,
    FeedComponent,
    create_app,
    state_of,
)
from quartsig.config import Settings
from quartsig.state import State
from tests.support.net import eventually
from tests.support.redisdb import REDIS_URL
from tests.support.standin import serve_standin
from tests.test_supervisor import Fault, caller_is

WAIT = 30.0


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Quart, State]]:
    async with _node(tmp_path) as started:
        yield started


@contextlib.asynccontextmanager
async def _node(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Quart, State]]:
    runner, url = await serve_standin("127.0.0.1", 0, seed=3)
    settings = Settings.from_env(
        {}, data_dir=tmp_path, scanner_url=url, interval=30.0,
        secret_keys=(Fernet.generate_key().decode(),), **options)
    app = create_app(settings, components=[DatabaseComponent(), FeedComponent(accounts=False),
                                           AlertsComponent()])
    try:
        async with app.test_app():
            yield app, state_of(app)
    finally:
        await runner.cleanup()


async def test_a_fault_in_the_delivery_workers_loop_restarts_it(
        node: tuple[Quart, State]) -> None:
    _, state = node
    deliverer = state.deliverer
    assert deliverer is not None
    assert {DELIVERIES, "alerts-writer", "alerts-rules"} <= set(state.supervisor.records)
    # The end of every turn of the poll, outside its own try: what a bug there would do.
    fault = Fault(deliverer._wake, "clear", caller_is("_polling"))
    try:
        deliverer.wake()
        await eventually(lambda: fault.fired, WAIT, what="the fault in the worker's loop")
        record = state.supervisor.records[DELIVERIES]
        await eventually(lambda: record.restarts >= 1, WAIT, what="the worker restarted")

        def working() -> bool:
            deliverer.wake()  # a turn ends at once instead of after the idle wait
            return fault.after >= 1

        await eventually(working, WAIT, what="the worker at work again")
        assert record.failures == 1 and "injected fault" in record.last_error
        assert state.metrics.task_failures.labels(task=DELIVERIES)._value.get() == 1
        assert state.supervisor.failing() == []
    finally:
        fault.undo()


async def test_a_fault_in_the_stream_consumer_restarts_the_worker(
        tmp_path: Path, prefix: str) -> None:
    async with _node(tmp_path, redis_url=REDIS_URL, redis_prefix=prefix,
                     lease_ttl=1.5) as (_, state):
        deliverer = state.deliverer
        assert deliverer is not None and deliverer.announcements is not None
        # Outside the consumer's own handling of Redis errors: what a bug there would do.
        fault = Fault(deliverer, "_take", caller_is("_consuming"))
        try:
            await eventually(lambda: fault.fired, WAIT, what="the fault in the consumer")
            record = state.supervisor.records[DELIVERIES]
            await eventually(lambda: record.restarts >= 1, WAIT, what="the worker restarted")
            await eventually(lambda: fault.after >= 1, WAIT, what="the stream read again")
            assert record.failures == 1
            assert record.last_error == "RuntimeError: injected fault in _take"
        finally:
            fault.undo()
