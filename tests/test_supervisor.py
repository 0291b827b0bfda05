"""Every long-lived task runs under one supervisor: none may die silently (issue #20.1).

The unit tests drive :class:`Supervisor` with tiny backoffs; the app tests inject a fault
into each kind of task of a real node (Redis broker, collector against the stand-in scanner)
and see the task come back, and a collector that keeps failing take the node out.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from quart import Quart

from quartsig.app import FeedComponent, create_app, state_of
from quartsig.cluster import demand as demand_module
from quartsig.cluster import node as node_module
from quartsig.cluster import redisbroker as redisbroker_module
from quartsig.config import Settings
from quartsig.domain.model import Key
from quartsig.ops.supervisor import Record, Supervisor, backoff
from quartsig.state import State
from tests.support.net import eventually
from tests.support.redisdb import REDIS_URL
from tests.support.standin import serve_standin

WAIT = 30.0  # generous: a busy 2-core machine runs these


def test_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    assert [backoff(n, 0.5, 4.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_record_forgives_failures_once_the_task_ran_long_enough() -> None:
    record = Record("x")
    for now in (0.0, 1.0, 2.0):
        record.start(now)
        record.fail(now + 0.1, RuntimeError("boom"), settle=10.0)
    assert record.failing(2.5, threshold=3, settle=10.0)  # waiting for its restart
    record.start(3.0)
    assert record.failing(5.0, 3, 10.0)  # restarted, not settled yet
    assert not record.failing(13.0, 3, 10.0)  # ran ten seconds: well again
    record.fail(14.0, RuntimeError("again"), settle=10.0)
    assert (record.streak, record.failures, record.last_error) == (1, 4, "RuntimeError: again")


async def test_a_task_that_raises_is_logged_with_its_traceback_counted_and_restarted(
        caplog: pytest.LogCaptureFixture) -> None:
    failed: list[str] = []
    runs: list[int] = []
    back = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("injected fault")
        back.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(on_failure=failed.append, backoff_base=0.001)
    with caplog.at_level(logging.ERROR, "quartsig.ops.supervisor"):
        task = supervisor.spawn("flaky", flaky)
        async with asyncio.timeout(WAIT):
            await back.wait()
    assert failed == ["flaky"]
    assert supervisor.records["flaky"].restarts == 1
    [line] = [r for r in caplog.records if "task flaky failed" in r.getMessage()]
    assert line.exc_info is not None and "injected fault" in str(line.exc_info[1])
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_a_task_that_keeps_failing_is_named_until_it_has_run_settle_seconds() -> None:
    changes: list[list[str]] = []
    healthy = asyncio.Event()

    async def broken() -> None:
        if not healthy.is_set():
            raise ValueError("bad entry")
        await asyncio.Event().wait()

    supervisor = Supervisor(backoff_base=0.001, backoff_max=0.001, settle=0.2)
    supervisor.on_change = lambda: changes.append(supervisor.failing())
    task = supervisor.spawn("reader", broken)
    await eventually(lambda: supervisor.failing() == ["reader"], WAIT, what="failing")
    assert supervisor.is_failing("reader")
    healthy.set()  # the fault goes away: it runs, and settles
    await eventually(lambda: supervisor.failing() == [], WAIT, what="recovered")
    await eventually(lambda: changes and changes[-1] == [], WAIT, what="told recovered")
    assert ["reader"] in changes
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_task_that_returns_has_ended_and_is_not_restarted() -> None:
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)

    supervisor = Supervisor(backoff_base=0.001)
    await supervisor.spawn("once", once)
    assert runs == [1] and supervisor.records["once"].restarts == 0


# -- every kind of task of a real node ---------------------------------------------------------


class Fault:
    """Raises once in place of ``owner.name`` (when ``when`` says so), then counts the calls
    that follow: a call after the fault means the task that makes it is back."""

    def __init__(self, owner: Any, name: str, when: Callable[..., bool] = lambda *a: True):
        self.owner, self.name, self.when = owner, name, when
        self.original = getattr(owner, name)
        self.fired = False
        self.after = 0
        setattr(owner, name, self)

    def undo(self) -> None:
        setattr(self.owner, self.name, self.original)

    def __get__(self, instance: Any, owner: Any) -> Any:  # set on a class: bind like a method
        return self if instance is None else lambda *a, **k: self(instance, *a, **k)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fired:
            self.after += 1
        elif self.when(*args):
            self.fired = True
            raise RuntimeError(f"injected fault in {self.name}")
        return self.original(*args, **kwargs)


def caller_is(name: str) -> Callable[..., bool]:
    return lambda *args: sys._getframe(2).f_code.co_name == name


@pytest.fixture
async def node(prefix: str, tmp_path: Path) -> AsyncIterator[tuple[Quart, State]]:
    runner, url = await serve_standin("127.0.0.1", 0, seed=3)
    settings = Settings.from_env(
        {}, data_dir=tmp_path, scanner_url=url, interval=1.0, lease_ttl=1.5,
        redis_url=REDIS_URL, redis_prefix=prefix,
        secret_keys=(Fernet.generate_key().decode(),))
    app = create_app(settings, components=[FeedComponent()])
    try:
        async with app.test_app():
            state = state_of(app)
            assert state.broker is not None
            await eventually(lambda: state.broker is not None and state.broker.leading(),
                             WAIT, what="the lease")
            yield app, state
    finally:
        await runner.cleanup()


def fault_for(task: str, state: State) -> Fault:
    """A fault that escapes the task's own error handling once. The cluster's loops guard each
    round (a Redis error or a bad entry is logged and skipped there), so their fault is in the
    guard itself: what a bug outside any round would do."""
    broker: Any = state.broker
    if task == "collector":
        return Fault(broker, "demand")
    if task == "lease":
        return Fault(broker.election.vacant, "wait")
    if task == "changes":
        return Fault(node_module, "guarded", caller_is("follow"))
    if task == "wanted":
        return Fault(demand_module, "guarded", caller_is("listen"))
    if task == "demand":
        return Fault(redisbroker_module, "guarded", caller_is("advertise"))
    if task == "newcomers":
        return Fault(node_module, "guarded", caller_is("newcomers"))
    if task == "health":
        return Fault(state, "review_health", caller_is("watch_health"))
    if task == "accounts":
        return Fault(type(state.new_keys), "prune")  # slotted: the class's method
    assert task == "sessions"
    return Fault(state, "expire_sessions")


TASKS = ["collector", "lease", "changes", "wanted", "demand", "newcomers", "health",
         "accounts", "sessions"]


@pytest.mark.parametrize("task", TASKS)
async def test_each_kind_of_task_killed_by_a_fault_comes_back(
        node: tuple[Quart, State], task: str) -> None:
    _, state = node
    fault = fault_for(task, state)
    try:
        await _see_it_back(state, task, fault)
    finally:
        fault.undo()


async def _see_it_back(state: State, task: str, fault: Fault) -> None:
    if task in ("newcomers", "wanted"):  # they act on keys new to this node / the cluster
        state.hub.attach(sink := _Sink(), 1)
        for tf in ("1h", "4h", "1d"):
            state.hub.subscribe(sink, Key("summary", "FX_IDC:EURUSD", tf))
            await asyncio.sleep(0.3)
    await eventually(lambda: fault.fired, WAIT, what=f"the fault in {task}")
    record = state.supervisor.records[task]
    await eventually(lambda: record.restarts >= 1, WAIT, what=f"{task} restarted")
    if task in ("newcomers", "wanted"):
        state.hub.subscribe(sink, Key("summary", "FX_IDC:USDJPY", "1h"))
    await eventually(lambda: fault.after >= 1, WAIT, what=f"{task} at work again")
    assert record.failures == 1
    metric = state.metrics.task_failures.labels(task=task)._value.get()
    assert metric == 1
    assert state.supervisor.failing() == []


class _Sink:
    def deliver(self, key: Key, piece: Any) -> None: ...

    def discard(self, key: Key) -> None: ...

    def send(self, text: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


async def test_a_collector_that_keeps_failing_fails_health_degrades_and_steps_down(
        node: tuple[Quart, State]) -> None:
    app, state = node
    broker: Any = state.broker
    state.supervisor.settle = 2.0
    broken = True
    original = broker.demand

    async def demand() -> set[Key]:
        if broken:
            raise ValueError("not enough values to unpack")  # a bad demand entry, say
        result: set[Key] = await original()
        return result

    broker.demand = demand
    await eventually(lambda: state.supervisor.is_failing("collector"), WAIT, what="failing")
    client = app.test_client()
    response = await client.get("/healthz")
    body = await response.get_json()
    assert response.status_code == 503
    assert body["failing"][0] == "tasks" and "collector" in body["checks"]["tasks"]
    assert (await client.get("/readyz")).status_code == 503
    assert state.hub.status == ("degraded", "failing: collector")
    await eventually(lambda: not broker.leading(), WAIT, what="stepping down")
    broken = False  # the fault is gone: it settles, campaigns, leads and publishes again
    await eventually(lambda: broker.leading(), WAIT, what="leading again")


    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await eventually(ready, WAIT, what="ready again")
    await eventually(lambda: state.hub.status == ("ok", ""), WAIT, what="clients told ok")


async def test_a_repeated_failure_is_one_line_with_a_count_and_one_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    calls = asyncio.Event()
    runs: list[int] = []

    async def broken() -> None:
        runs.append(1)
        if len(runs) >= 5:
            calls.set()
            await asyncio.Event().wait()
        now[0] += 11.0  # past the report period: every failure is due a line
        raise ConnectionError("database down")

    supervisor = Supervisor(clock=lambda: now[0], backoff_base=0.001, backoff_max=0.001)
    with caplog.at_level(logging.ERROR, "quartsig.ops.supervisor"):
        task = supervisor.spawn("accounts", broken)
        async with asyncio.timeout(WAIT):
            await calls.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    lines = [r for r in caplog.records if "task accounts failed" in r.getMessage()]
    assert len(lines) == 4
    assert [bool(r.exc_info) for r in lines] == [True, False, False, False]
    assert all("ConnectionError: database down" in r.getMessage() for r in lines)
