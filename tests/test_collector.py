"""The collector: merging a tick's results, publishing only changes, and the tick loop.

``merge_results`` and ``Collector.publish`` are driven with hand-built ``ScanResult``s
whose values come from the stand-in's pure value model, through the real built-in
profiles, a real ``Hub`` and real ``Connection``s. ``Collector.run`` talks HTTP to a
stand-in served in this process, through the real ``ScannerClient``.
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

from quartsig.broker.memory import MemoryBroker
from quartsig.collector import Collector, merge_results
from quartsig.connection import Connection
from quartsig.hub import Hub
from quartsig.model import Batch, Key, Row, ScanError, ScanRequest, ScanResult
from quartsig.planner import Limits
from quartsig.plugins import get_plugin_manager, load_profiles
from quartsig.profiles import Profile
from quartsig.scanner import ScannerClient
from quartsig.symbols import screener_for
from quartsig.timeframes import split_column
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


# ------------------------------------------------------------------------ merge_results


def test_rows_of_one_ticker_are_merged_across_requests():
    first = request([USDJPY, EURUSD], ["RSI|5", "close|5"])
    second = request([USDJPY], ["Recommend.All|5"])
    outcome = merge_results(
        [
            ok(first, {USDJPY: {"RSI|5": 40.0, "close|5": 150.1}, EURUSD: {"RSI|5": 60.0}}),
            ok(second, {USDJPY: {"Recommend.All|5": 0.25}}),
        ]
    )
    assert outcome.rows == {
        USDJPY: {"RSI|5": 40.0, "close|5": 150.1, "Recommend.All|5": 0.25},
        EURUSD: {"RSI|5": 60.0},
    }
    assert outcome.unknown == set() and outcome.incomplete == set()
    assert outcome.bad_columns == set()


def test_unknown_means_missing_from_a_success_and_returned_nowhere():
    first = request([USDJPY, NOWHERE, EURUSD], ["RSI|5"])
    second = request([EURUSD], ["RSI|15"])  # EURUSD is missing above but returned here
    outcome = merge_results(
        [ok(first, {USDJPY: {"RSI|5": 40.0}}), ok(second, {EURUSD: {"RSI|15": 55.0}})]
    )
    assert outcome.unknown == {NOWHERE}
    assert set(outcome.rows) == {USDJPY, EURUSD}


def test_failed_requests_mark_their_tickers_incomplete_not_unknown():
    first = request([USDJPY, EURUSD], ["RSI|5"])
    second = request([EURUSD, BTC], ["RSI|15"])
    outcome = merge_results([ok(first, {USDJPY: {"RSI|5": 40.0}}), failed(second)])
    # EURUSD is missing from a successful answer, but its other request failed: no verdict.
    assert outcome.incomplete == {EURUSD, BTC}
    assert outcome.unknown == set()
    assert outcome.rows == {USDJPY: {"RSI|5": 40.0}}


def test_bad_columns_are_collected():
    bad = request([USDJPY], ["Nope|5"])
    worse = request([EURUSD], ["Nah|15"])
    fine = request([BTC], ["RSI|5"], "crypto")
    outcome = merge_results(
        [
            failed(bad, "bad_column", "Nope|5"),
            failed(worse, "bad_column", "Nah|15"),
            failed(fine, "throttled"),
            ok(request([], ["RSI|5"]), {}),
        ]
    )
    assert outcome.bad_columns == {"Nope|5", "Nah|15"}
    assert outcome.incomplete == {USDJPY, EURUSD, BTC}


def test_merge_of_nothing_is_empty():
    outcome = merge_results([])
    assert (outcome.rows, outcome.unknown, outcome.incomplete, outcome.bad_columns) == (
        {},
        set(),
        set(),
        set(),
    )


# ------------------------------------------------------------------------ publish


async def test_publish_sends_snapshots_then_only_what_changed():
    market = Market()
    col = collector()
    full, summary = Key("full", USDJPY, "5m"), Key("summary", USDJPY, "5m")
    conn = attach(hub_of(col), full, summary)
    assert messages(conn) == []  # nothing cached yet

    keys = hub_of(col).demand()
    assert publish(col, keys, [market.answer(r) for r in col.plan(keys)]) == 2
    first = messages(conn)
    assert sorted(m["type"] for m in first) == ["snapshot", "snapshot"]
    state: dict[Key, dict[str, Any]] = {}
    apply(state, first)
    assert state == {full: market.expected(FULL, full), summary: market.expected(SUMMARY, summary)}
    assert hub_of(col).fresh == set()

    # The same answer again: nothing to send.
    assert publish(col, keys, [market.answer(r) for r in col.plan(keys)]) == 0
    assert messages(conn) == []

    # The market moves until the full profile changes (a step moves 30% of the series).
    for _ in range(20):
        market.model.step()
        if market.expected(FULL, full) != state[full]:
            break
    before = {key: dict(data) for key, data in state.items()}
    changed = publish(col, keys, [market.answer(r) for r in col.plan(keys)])
    received = messages(conn)
    assert changed == len(received) >= 1
    assert {m["type"] for m in received} == {"update"}
    for message in received:
        key = Key(message["profile"], message["symbol"], message["tf"])
        # Only changed keys, each with a value that differs from what the client holds.
        assert message["data"]
        assert all(before[key].get(name) != value for name, value in message["data"].items())
        assert len(message["data"]) < len(before[key]) or key.profile == "summary"
    apply(state, received)
    assert state == {full: market.expected(FULL, full), summary: market.expected(SUMMARY, summary)}


async def test_two_subscribers_receive_the_same_encoded_piece():
    market = Market()
    col = collector()
    key = Key("full", EURUSD, "1h")
    one, two = attach(hub_of(col), key, user=1), attach(hub_of(col), key, user=2)
    keys = hub_of(col).demand()
    publish(col, keys, [market.answer(r) for r in col.plan(keys)])
    assert one.take() == two.take()
    for _ in range(20):
        market.model.step()
        if publish(col, keys, [market.answer(r) for r in col.plan(keys)]):
            break
    assert one._pending[key] is two._pending[key]  # one piece, encoded once
    assert one.take() == two.take()


async def test_unchanged_inputs_are_not_recomputed():
    profile, calls = counting()
    market = Market()
    col = collector({"counting": profile})
    usd5, usd1h = Key("counting", USDJPY, "5m"), Key("counting", USDJPY, "1h")
    conn = attach(hub_of(col), usd5, usd1h)
    keys = hub_of(col).demand()

    publish(col, keys, [market.answer(r) for r in col.plan(keys)])
    assert len(calls) == 2  # one compute per key
    assert len(messages(conn)) == 2

    for _ in range(3):
        publish(col, keys, [market.answer(r) for r in col.plan(keys)])
    assert len(calls) == 2  # same rows: no compute, nothing sent
    assert messages(conn) == []

    # Only the 5m inputs move: only the 5m key is computed again.
    row = market.row(USDJPY, ("RSI|5", "Recommend.All|5", "RSI|60", "Recommend.All|60"))
    row["RSI|5"] += 1.0
    [req] = col.plan(keys)
    publish(col, keys, [ok(req, {USDJPY: {c: row[c] for c in req.columns}})])
    assert len(calls) == 3 and calls[-1]["RSI"] == row["RSI|5"]
    [update] = messages(conn)
    assert (update["type"], update["tf"], update["data"]) == ("update", "5m", {"RSI": row["RSI|5"]})


async def test_each_row_is_read_through_its_own_request_layout():
    """Rows of two requests whose columns are in different orders, one of them short of a
    column: each key gets its own values (pickers are per layout, a missing column is null)."""
    profile, calls = counting()
    col = collector({"counting": profile})
    usd, eur = Key("counting", USDJPY, "5m"), Key("counting", EURUSD, "5m")
    conn = attach(hub_of(col), usd, eur)
    one = request([USDJPY], ["RSI|5", "Recommend.All|5"])
    two = request([EURUSD], ["Recommend.All|5", "Other|5"])
    publish(col, [usd, eur], [ok(one, {USDJPY: {"RSI|5": 61.0, "Recommend.All|5": 0.3}}),
                              ok(two, {EURUSD: {"Recommend.All|5": -0.2, "Other|5": 7.0}})])
    got = {m["symbol"]: m["data"] for m in messages(conn)}
    assert got == {USDJPY: {"Recommend.All": 0.3, "RSI": 61.0},
                   EURUSD: {"Recommend.All": -0.2, "RSI": None}}
    assert len(calls) == 2


async def test_a_key_in_a_failed_request_keeps_its_data_and_status_reports_it():
    market = Market()
    col = collector()
    forex, crypto = Key("summary", USDJPY, "5m"), Key("summary", BTC, "5m")
    fx_conn, btc_conn = attach(hub_of(col), forex, user=1), attach(hub_of(col), crypto, user=2)
    keys = hub_of(col).demand()
    requests = col.plan(keys)
    assert len(requests) == 2  # one per screener

    publish(col, keys, [market.answer(r) for r in requests])
    kept = {c: messages(c)[0]["data"] for c in (fx_conn, btc_conn)}
    assert hub_of(col).status[0] == "ok"

    def tick(fail: set[str]) -> None:
        results = [failed(r) if r.screener in fail else market.answer(r) for r in requests]
        publish(col, keys, results)

    # Move both symbols until each summary value differs, so a sent update would show.
    for _ in range(50):
        market.model.step()
        if all(market.expected(SUMMARY, k)["Recommend.All"] != kept[c]["Recommend.All"]
               for k, c in ((forex, fx_conn), (crypto, btc_conn))):
            break

    tick({"crypto"})
    fx, btc = messages(fx_conn), messages(btc_conn)
    assert [m["type"] for m in fx] == ["status", "update"]
    assert fx[0]["upstream"] == "degraded" and "1 of 2 requests failed" in fx[0]["reason"]
    assert btc == [fx[0]]  # the status only: the crypto key keeps its last data
    assert hub_of(col).entries[crypto].data == kept[btc_conn]
    assert hub_of(col).demand() == keys  # and it is still wanted

    tick({"crypto", "forex"})
    down = [messages(c) for c in (fx_conn, btc_conn)]
    assert [[m["type"] for m in got] for got in down] == [["status"], ["status"]]
    assert down[0][0]["upstream"] == down[1][0]["upstream"] == "down"

    tick(set())  # recovery: ok, and the fresh data the crypto subscriber missed
    btc = messages(btc_conn)
    assert [m["type"] for m in btc] == ["status", "update"]
    assert btc[0]["upstream"] == "ok"
    assert btc[1]["data"]["Recommend.All"] == market.expected(SUMMARY, crypto)["Recommend.All"]
    assert [m["type"] for m in messages(fx_conn)] == ["status"]
    assert hub_of(col).status[0] == "ok"


async def test_a_ticker_split_across_requests_keeps_its_data_when_one_part_fails():
    market = Market()
    col = collector(limits=Limits(max_columns=40, max_cells=40))
    key = Key("full", USDJPY, "1d")
    conn = attach(hub_of(col), key)
    keys = hub_of(col).demand()
    requests = col.plan(keys)
    assert len(requests) > 2  # full has ~90 columns: split by columns
    publish(col, keys, [market.answer(r) for r in requests])
    [snapshot] = messages(conn)
    assert snapshot["data"] == market.expected(FULL, key)

    for _ in range(20):
        market.model.step()
        if market.expected(FULL, key) != snapshot["data"]:
            break
    results = [market.answer(r) for r in requests]
    results[1] = failed(requests[1])
    publish(col, keys, results)
    assert [m["type"] for m in messages(conn)] == ["status"]  # degraded, and no half update
    assert hub_of(col).entries[key].data == snapshot["data"]

    publish(col, keys, [market.answer(r) for r in requests])
    status, update = messages(conn)
    assert status["upstream"] == "ok"
    assert {**snapshot["data"], **update["data"]} == market.expected(FULL, key)


async def test_unknown_tickers_are_rejected_and_reported_once():
    market = Market()
    unknown: list[str] = []
    col = collector(unknown=unknown)
    gone = [Key("summary", NOWHERE, "5m"), Key("full", NOWHERE, "1h")]
    fine = Key("summary", USDJPY, "5m")
    conn = attach(hub_of(col), *gone, fine)
    keys = hub_of(col).demand()
    publish(col, keys, [market.answer(r) for r in col.plan(keys)])

    received = messages(conn)
    errors = [m for m in received if m["type"] == "error"]
    assert {(e["code"], e["symbol"], e["tf"], e["profile"]) for e in errors} == {
        ("unknown_symbol", NOWHERE, "5m", "summary"),
        ("unknown_symbol", NOWHERE, "1h", "full"),
    }
    assert [m["type"] for m in received if m["type"] != "error"] == ["snapshot"]
    assert unknown == [NOWHERE]  # once per symbol, whatever the keys
    assert hub_of(col).demand() == {fine}
    assert hub_of(col).subscriptions[conn] == {fine}
    assert hub_of(col).status[0] == "ok"  # an unknown ticker is not upstream trouble


async def test_a_rejected_column_is_charged_to_its_profiles_not_to_the_status():
    market = Market()
    col = collector()
    forex, crypto = Key("summary", USDJPY, "5m"), Key("summary", BTC, "5m")
    conn = attach(hub_of(col), forex, crypto)
    keys = hub_of(col).demand()
    requests = col.plan(keys)
    results = [
        failed(r, "bad_column", "Recommend.All|5") if r.screener == "crypto" else market.answer(r)
        for r in requests
    ]
    publish(col, keys, results)
    received = messages(conn)
    assert not [m for m in received if m["type"] == "status"]  # still ok
    assert hub_of(col).status[0] == "ok"
    errors = [m for m in received if m["type"] == "error"]
    assert {m["code"] for m in errors} == {"profile_failed"}
    assert all("Recommend.All" in m["message"] and m["profile"] == "summary" for m in errors)
    assert hub_of(col).subscriptions[conn] == {forex, crypto}  # told, not dropped


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
        await asyncio.sleep(0.3)  # the first (empty) tick has passed; the next is 30 s away
        first, second = Key("summary", USDJPY, "5m"), Key("full", BTC, "1h")
        started = time.monotonic()
        conn = attach(hub_of(col), first)
        await asyncio.sleep(0.05)
        other = attach(hub_of(col), second, user=2)  # same burst: same early fetch
        await wait_for(lambda: hub_of(col).entries[second].data is not None, 3.0)
        elapsed = time.monotonic() - started
        assert elapsed < 15  # an early fetch: the next tick is 30 s away
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
