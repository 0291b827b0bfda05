"""The collector: the tick loop and early fetches, and the helpers its tests and the
composer's share (tests/test_composer.py: merging a tick's results, publishing only changes).

``Collector.run`` talks HTTP to a stand-in served in this process, through the real
``ScannerClient``; the helpers drive ``Collector.compose`` with hand-built ``ScanResult``s
whose values come from the stand-in's pure value model, through the real built-in profiles,
a real ``Hub`` and real ``Connection``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from quartsig.cluster.memory import MemoryBroker
from quartsig.domain.model import Batch, Key, Row, ScanError, ScanRequest, ScanResult
from quartsig.domain.symbols import screener_for
from quartsig.domain.timeframes import split_column
from quartsig.fanout.connection import Connection
from quartsig.fanout.hub import Hub
from quartsig.feed.collector import Collector
from quartsig.plugins.loader import get_plugin_manager, load_profiles
from quartsig.plugins.profiles import Profile
from quartsig.upstream.scanner import ScannerClient
from tests.support.standin import STANDIN, Standin, serve_standin

PROFILES = load_profiles(get_plugin_manager(entry_points=False))
FULL, SUMMARY = PROFILES["full"], PROFILES["summary"]

USDJPY = "FX_IDC:USDJPY"
EURUSD = "FX_IDC:EURUSD"
BTC = "BINANCE:BTCUSDT"
NOWHERE = "FX_IDC:ZZZQQQ"  # a well-formed ticker TradingView does not have


# ------------------------------------------------------------------------ helpers


#: What each test connection has sent so far (its drain task sends as soon as it can).
_sent: dict[Connection, list[str]] = {}


def messages(conn: Connection) -> list[dict[str, Any]]:
    """Everything the connection sent since the last call, or would send next, decoded."""
    frames = _sent.setdefault(conn, [])
    pending = conn.take()
    texts = [*frames, *([pending] if pending is not None else [])]
    frames.clear()
    out: list[dict[str, Any]] = []
    for text in texts:
        value = orjson.loads(text)
        out.extend(value if isinstance(value, list) else [value])
    return out


def ok(request: ScanRequest, rows: Mapping[str, dict[str, Any]]) -> ScanResult:
    """A successful answer to ``request``: these rows; the other tickers are missing."""
    return ScanResult(
        request,
        {ticker: Row.of(row) for ticker, row in rows.items()},
        frozenset(set(request.tickers) - set(rows)),
        None,
        1,
        0.01,
    )


def failed(request: ScanRequest, kind: str = "blocked", column: str | None = None) -> ScanResult:
    status = 400 if kind == "bad_column" else 503
    error = ScanError(kind, f"{kind} for the test", kind != "bad_column", status, column)
    return ScanResult(request, {}, frozenset(), error, 3, 0.5)


def request(tickers: Iterable[str], columns: Iterable[str], screener: str = "forex") -> ScanRequest:
    return ScanRequest(screener, tuple(tickers), tuple(columns))


@dataclass
class Market:
    """Rows as TradingView would answer them, from the stand-in's deterministic model."""

    model: Standin = field(default_factory=lambda: Standin(seed=3))

    def row(self, ticker: str, columns: Iterable[str]) -> dict[str, Any]:
        out = {}
        for name in columns:
            base, tf = split_column(name)
            out[name] = self.model.values(ticker, tf)[base]
        return out

    def answer(self, req: ScanRequest, skip: Iterable[str] = ()) -> ScanResult:
        known = {t for tickers in self.model.universe.values() for t in tickers}
        rows = {
            t: self.row(t, req.columns) for t in req.tickers if t in known and t not in skip
        }
        return ok(req, rows)

    def expected(self, profile: Profile, key: Key) -> dict[str, Any]:
        """What ``profile`` makes of the current values: the truth a client must converge to."""
        values = self.model.values(key.symbol, key.tf)
        return profile.compute({base: values.get(base) for base in profile.columns})


def counting(name: str = "counting", columns: tuple[str, ...] = ("Recommend.All", "RSI")):
    calls: list[dict[str, Any]] = []

    def compute(row: Mapping[str, Any]) -> dict[str, Any]:
        calls.append(dict(row))
        return {base: row.get(base) for base in columns}

    return Profile(name, "counts its computes", columns, compute), calls


def collector(
    profiles: Mapping[str, Profile] | None = None,
    client: ScannerClient | None = None,
    **options: Any,
) -> Collector:
    unknown: list[str] = options.pop("unknown", [])
    hub = Hub()

    def deliver(batch: Batch) -> int:
        unknown.extend(sorted({key.symbol for key, _, _ in batch.rejected}))
        return hub.apply(batch)

    return Collector(
        MemoryBroker(hub, deliver),
        dict(PROFILES if profiles is None else profiles),
        client or ScannerClient("http://127.0.0.1:9"),  # compose() never fetches
        screener_for,
        **options,
    )


def hub_of(col: Collector) -> Hub:
    broker = col.broker
    assert isinstance(broker, MemoryBroker)
    return broker.hub


def publish(col: Collector, keys: Iterable[Key], results: list[ScanResult]) -> int:
    """Compose a batch from ``results`` and apply it to the collector's hub, as a tick does."""
    broker = col.broker
    assert isinstance(broker, MemoryBroker)
    return int(broker.deliver(col.compose(list(keys), results)))  # type: ignore[call-overload]


def attach(hub: Hub, *keys: Key, user: int = 1) -> Connection:
    frames: list[str] = []

    async def record(text: str) -> None:
        frames.append(text)

    conn = Connection(record)
    _sent[conn] = frames
    hub.attach(conn, user)
    for key in keys:
        hub.subscribe(conn, key)
    return conn


def apply(state: dict[Key, dict[str, Any]], received: list[dict[str, Any]]) -> None:
    for message in received:
        if message["type"] in ("snapshot", "update"):
            key = Key(message["profile"], message["symbol"], message["tf"])
            if message["type"] == "snapshot":
                state[key] = dict(message["data"])
            else:
                state[key].update(message["data"])


# ------------------------------------------------------------------------ run (real HTTP)


@contextlib.asynccontextmanager
async def running(
    profiles: Mapping[str, Profile] | None = None,
    *,
    retry_delays: tuple[float, ...] = (0.05,),
    scanner_timeout: float = 5.0,
    **options: Any,
) -> AsyncIterator[tuple[Collector, Standin]]:
    """A collector ticking against a stand-in served in this process."""
    runner, url = await serve_standin("127.0.0.1", 0, seed=5, change_share=1.0)
    client = ScannerClient(url, retry_delays=retry_delays, timeout=scanner_timeout)
    await client.start()
    col = collector(profiles, client, **options)
    task = asyncio.create_task(col.run())
    try:
        yield col, runner.app[STANDIN]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()  # only cancellation ends the loop
        await client.close()
        await runner.cleanup()


async def wait_for(predicate: Any, within: float, step: float = 0.01) -> float:
    """Seconds until ``predicate()`` holds; fails after ``within``."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (state of other objects: polling is simplest)
            await asyncio.sleep(step)
    return time.monotonic() - started


async def test_run_ticks_every_interval():
    async with running(interval=0.3, batch_delay=0.05) as (col, standin):
        conn = attach(hub_of(col), Key("summary", USDJPY, "1m"))
        await wait_for(lambda: hub_of(col).entries[Key("summary", USDJPY, "1m")].data, 2.0)
        messages(conn)
        standin.clear_log()
        started = time.monotonic()
        ticks = col.ticks
        await wait_for(lambda: col.ticks >= ticks + 4, 30.0)  # it keeps ticking
        elapsed = time.monotonic() - started
        times = [entry.time for entry in standin.log]
        # Never faster than the interval (a late tick may be followed by a short catch-up gap,
        # never by a burst): one-sided bounds, which a busy machine cannot break.
        assert len(times) <= elapsed / 0.3 + 2, (len(times), elapsed)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 0.3 / 10 - 0.01 for gap in gaps), gaps


async def test_a_new_key_is_fetched_early_not_at_the_next_tick():
    async with running(interval=30.0, batch_delay=0.2) as (col, standin):
        full_ticks: list[set[Key]] = []  # what each full tick starts with, counted, not timed
        tick_starting = col.early.tick_starting

        def counted(keys: set[Key]) -> None:
            full_ticks.append(set(keys))
            tick_starting(keys)

        col.early.tick_starting = counted  # type: ignore[method-assign]
        await wait_for(lambda: col.ticks >= 1, 20.0)  # the first (empty) tick has passed
        assert full_ticks == [set()]
        first, second = Key("summary", USDJPY, "5m"), Key("full", BTC, "1h")
        conn = attach(hub_of(col), first)
        await asyncio.sleep(0.05)
        other = attach(hub_of(col), second, user=2)  # same burst: same early fetch
        # Bounded below the 30 s interval, and no full tick has started: an early fetch.
        await wait_for(lambda: hub_of(col).entries[second].data is not None, 20.0)
        assert full_ticks == [set()]
        assert len(standin.log) == 2  # both screeners' requests fetched together, once
        assert {t for e in standin.log for t in e.tickers} == {USDJPY, BTC}
        assert [m["type"] for m in messages(conn)] == ["snapshot"]
        assert [m["type"] for m in messages(other)] == ["snapshot"]

        # A cached key needs no fetch at all: its snapshot is there at subscribe time.
        late = attach(hub_of(col), first, user=3)
        assert [m["type"] for m in messages(late)] == ["snapshot"]
        await asyncio.sleep(0.5)
        assert len(standin.log) == 2


async def test_an_exception_in_a_profile_does_not_stop_the_loop():
    good, calls = counting()
    fail = {"on": True}

    def compute(row: Mapping[str, Any]) -> dict[str, Any]:
        if fail["on"]:
            raise ZeroDivisionError("a plugin bug")
        return {"rating": row.get("Recommend.All")}

    buggy = Profile("buggy", "raises while told to", ("Recommend.All",), compute)
    async with running({"buggy": buggy, "counting": good}, interval=0.2, batch_delay=0.05) as (
        col,
        standin,
    ):
        bad_key, good_key = Key("buggy", USDJPY, "5m"), Key("counting", EURUSD, "5m")
        conn = attach(hub_of(col), bad_key, good_key)
        await wait_for(lambda: hub_of(col).entries[good_key].data is not None, 5.0)
        ticks = len(standin.log)
        await wait_for(lambda: len(standin.log) >= ticks + 2, 5.0)  # still ticking
        fail["on"] = False
        await wait_for(lambda: hub_of(col).entries[bad_key].data is not None, 5.0)
        assert hub_of(col).status[0] == "ok"
        received = messages(conn)
        assert not [m for m in received if m["type"] == "status"]  # never anything but ok
        [told] = [m for m in received if m["type"] == "error"]  # once, not every tick
        assert (told["code"], told["profile"]) == ("profile_failed", "buggy")
        assert "ZeroDivisionError: a plugin bug" in told["message"]
        snapshot = next(m for m in received if m["type"] == "snapshot" and m["profile"] == "buggy")
        assert snapshot["data"] == {"rating": standin.values(USDJPY, "5m")["Recommend.All"]}
        assert calls  # the healthy profile kept computing


async def test_a_key_unsubscribed_before_its_answer_is_not_cached():
    interval = 0.25
    async with running(interval=interval, batch_delay=0.05) as (col, standin):
        standin.config.base_delay = 0.15  # answers arrive after the client has left
        key = Key("summary", USDJPY, "5m")
        conn = attach(hub_of(col), key)
        await wait_for(lambda: standin.in_flight > 0, 1.0)
        hub_of(col).detach(conn)
        await wait_for(lambda: standin.in_flight == 0 and len(standin.log) >= 1, 1.0)
        await asyncio.sleep(0.05)
        assert key not in hub_of(col).entries and hub_of(col).demand() == set()
        count = len(standin.log)
        await asyncio.sleep(3 * interval)
        assert len(standin.log) == count  # no demand, no request
