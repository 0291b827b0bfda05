"""The collector's loop against a stand-in served in this process: early fetches beside ticks and
one another, the early-fetch budget, the negative cache, and backing off from throttling.

Nothing here times anything: each test waits for an event (data arriving, a request in flight,
a backoff step) with a generous deadline, and checks order and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from quartsig.cluster.memory import MemoryBroker
from quartsig.domain.model import Key
from quartsig.fanout.handler import HubHandler
from quartsig.feed.budget import RequestBudget
from quartsig.feed.collector import Collector
from tests.support.standin import Standin
from tests.test_collector import attach, hub_of, messages
from tests.test_collector import running as run_collector

USDJPY = "FX_IDC:USDJPY"
EURUSD = "FX_IDC:EURUSD"
BTC = "BINANCE:BTCUSDT"
NOWHERE = "FX_IDC:ZZZQQQ"
SLOW = {"kind": "delay", "seconds": 60.0}  # answered long after each test has its verdict


def running(**options: Any) -> contextlib.AbstractAsyncContextManager[tuple[Collector, Standin]]:
    """The collector against the stand-in; scanner answers may take long (the SLOW fault)."""
    return run_collector(scanner_timeout=120.0, **options)


async def until(predicate: Any, within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (state of other objects: polling is simplest)
            await asyncio.sleep(0.005)


def requests_for(standin: Standin, ticker: str) -> int:
    return sum(ticker in entry.tickers for entry in standin.log)


async def test_an_early_fetch_does_not_wait_for_a_running_tick():
    async with running(interval=300.0) as (col, standin):
        hub = hub_of(col)
        standin.add_faults([SLOW])
        old = Key("summary", USDJPY, "1h")
        # Watched, but not as a new key: only the (slow) full tick fetches it.
        conn = attach(hub)
        hub.subscribe(conn, old, early=False)
        await col.broker.leadership()
        col._next_tick = 0.0
        await until(lambda: standin.in_flight == 1 and requests_for(standin, USDJPY) == 1)
        new = Key("summary", BTC, "1h")
        attach(hub, new, user=2)
        await until(lambda: hub.entries[new].data is not None)
        assert hub.entries[old].data is None  # the tick is still waiting for its answer
        assert standin.in_flight == 1


async def test_early_fetches_do_not_wait_for_one_another_nor_fetch_a_key_twice():
    async with running(interval=300.0) as (col, standin):
        hub = hub_of(col)
        await until(col.ticked.is_set)  # the first (empty) tick has passed
        standin.add_faults([SLOW])
        first = Key("summary", USDJPY, "1h")
        attach(hub, first)
        await until(lambda: standin.in_flight == 1)  # its early fetch hangs upstream
        second = Key("summary", BTC, "4h")
        again = attach(hub, first, second, user=2)  # first is in flight: only second is new
        await until(lambda: hub.entries[second].data is not None)
        assert hub.entries[first].data is None and standin.in_flight == 1
        assert requests_for(standin, USDJPY) == 1  # not fetched twice
        assert requests_for(standin, BTC) == 1
        assert [m["type"] for m in messages(again)] == ["snapshot"]


async def test_a_burst_is_fetched_in_few_requests():
    async with running(interval=300.0) as (col, standin):
        hub = hub_of(col)
        await until(col.ticked.is_set)
        keys = [Key("summary", t, tf) for t in (USDJPY, EURUSD) for tf in ("1m", "5m", "1h")]
        for n, key in enumerate(keys):
            attach(hub, key, user=n)
        await until(lambda: all(hub.entries[key].data is not None for key in keys))
        assert len(standin.log) <= 2  # the first alone at once, the rest gathered together


async def test_over_the_budget_a_new_key_waits_for_the_tick_and_is_told():
    clock_now = [0.0]
    budget = RequestBudget(1, burst=1, clock=lambda: clock_now[0])  # one request, no refill
    async with running(interval=300.0, budget=budget) as (col, standin):
        hub = hub_of(col)
        await until(col.ticked.is_set)
        first, second = Key("summary", USDJPY, "1h"), Key("summary", BTC, "1h")
        attach(hub, first)
        await until(lambda: hub.entries[first].data is not None)
        conn = attach(hub, second, user=2)
        await until(lambda: second in col.early.deferred)
        received: list[dict[str, Any]] = []

        def noticed() -> bool:
            received.extend(messages(conn))
            return any(m["type"] == "notice" for m in received)

        await until(noticed)
        [notice] = [m for m in received if m["type"] == "notice"]
        assert notice["code"] == "deferred" and notice["symbol"] == BTC
        assert notice["retry_at"] > time.time() * 1000 + 200_000  # the next tick, ~300 s away
        assert requests_for(standin, BTC) == 0 and len(standin.log) == 1
        await col.tick(hub.demand(), full=True)  # the next full tick serves it
        assert hub.entries[second].data is not None


async def test_an_unknown_symbol_costs_one_request_however_often_it_is_asked_for():
    async with running(interval=300.0) as (col, standin):
        hub = hub_of(col)
        await until(col.ticked.is_set)
        nowhere = Key("summary", NOWHERE, "1h")
        attach(hub, nowhere)
        await until(lambda: nowhere not in hub.entries and not col.early.in_flight)
        assert requests_for(standin, NOWHERE) == 1
        for n, tf in enumerate(("1m", "5m", "4h", "1d")):  # other keys of the same symbol
            conn = attach(hub, Key("full", NOWHERE, tf), user=10 + n)
            received: list[dict[str, Any]] = []

            def rejected(conn: Any = conn, received: list[dict[str, Any]] = received) -> bool:
                received.extend(messages(conn))
                return any(m["type"] == "error" for m in received)

            await until(rejected)
            assert received[-1]["code"] == "unknown_symbol"
        assert requests_for(standin, NOWHERE) == 1


async def test_throttled_ticks_back_off_with_one_probe_per_step():
    async with running(interval=0.2) as (col, standin):
        hub = hub_of(col)
        key = Key("summary", USDJPY, "1h")
        conn = attach(hub)
        hub.subscribe(conn, key, early=False)  # fetched by ticks only
        standin.add_faults([{"kind": "status", "status": 429, "sticky": True}])
        await until(lambda: col.backoff.steps >= 5)
        # The first throttled tick may retry (1 + 1 attempt); after it, one request per step.
        assert len(standin.log) <= 2 + col.backoff.steps
        statuses: list[dict[str, Any]] = [m for m in messages(conn) if m["type"] == "status"]
        assert statuses and statuses[-1]["upstream"] == "down"
        assert statuses[-1]["retry_at"] >= time.time() * 1000 - 60_000  # a wall-clock instant
        assert len({s["retry_at"] for s in statuses}) >= 4  # told at each step
        standin.clear_faults()
        await until(lambda: hub.entries[key].data is not None)
        assert not col.backoff.active() and hub.status[0] == "ok" and hub.retry_at is None
        status = [m for m in messages(conn) if m["type"] == "status"][-1]
        assert status["upstream"] == "ok" and "retry_at" not in status


async def test_backoff_honours_retry_after():
    async with running(interval=0.2) as (col, standin):
        hub = hub_of(col)
        conn = attach(hub)
        hub.subscribe(conn, Key("summary", USDJPY, "1h"), early=False)
        standin.add_faults([{"kind": "status", "status": 429, "retry_after": 3, "sticky": True}])
        await until(lambda: col.backoff.steps >= 1)
        assert col.backoff.until - col._backoff_stepped >= 2.9


async def test_a_deferred_key_is_published_by_the_next_tick_even_if_unchanged():
    budget = RequestBudget(1, burst=1, clock=lambda: 0.0)  # one request, no refill
    async with running(interval=300.0, budget=budget) as (col, _standin):
        hub = hub_of(col)
        await until(col.ticked.is_set)
        key = Key("summary", USDJPY, "1h")
        first = attach(hub, key)  # fetched early: the budget is spent
        await until(lambda: hub.entries[key].data is not None)
        hub.detach(first)
        hub.retain = 0.0
        hub.sweep()  # the hub forgets the key; the collector still knows its inputs
        assert key not in hub.entries
        attach(hub, key, user=2)
        await until(lambda: key in col.early.deferred)
        await col.tick(hub.demand(), full=True)  # same values as before: published anyway
        assert hub.entries[key].data is not None


class TakingBroker(MemoryBroker):
    """``wanted()`` waits without taking, ``wanted_now()`` takes: the Redis broker's contract."""

    def __init__(self, hub: Any, deliver: Any) -> None:
        super().__init__(HubHandler(hub, deliver))
        self.waits = 0

    async def wanted(self) -> set[Key]:
        self.waits += 1
        await asyncio.sleep(0)  # a caller that spins still lets the test run, and fail
        return await super().wanted()


async def test_new_keys_are_taken_from_the_broker_not_just_peeked_at():
    async with running(interval=300.0) as (col, _standin):
        hub = hub_of(col)
        col.broker = broker = TakingBroker(hub, col.broker.handler.apply)  # type: ignore[attr-defined]
        await until(col.ticked.is_set)
        key = Key("summary", USDJPY, "1h")
        attach(hub, key)
        await until(lambda: hub.entries[key].data is not None)
        waits = broker.waits
        await asyncio.sleep(0.2)  # a loop that only peeks spins here, thousands of waits
        assert broker.waits - waits <= 2
