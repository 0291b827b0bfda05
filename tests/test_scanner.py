"""The scanner client against a real stand-in: rows, retries, deadlines, bounds, health."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartsig import __version__
from quartsig.domain.model import Layout, Row, ScanError, ScanRequest, ScanResult
from quartsig.upstream.scanner import (
    RowCache,
    ScannerClient,
    backoff_delay,
    build_body,
    classify_status,
    parse_body,
    parse_retry_after,
    summarise,
)
from tests.support.net import free_port
from tests.support.scanning import (
    running_standin,
    standin_fixture,  # noqa: F401
)

FOREX = ("FX_IDC:USDJPY", "FX_IDC:EURUSD", "FX_IDC:GBPUSD")
REQUEST = ScanRequest("forex", FOREX, ("Recommend.All|5", "RSI|5", "close", "volume"))
FAST = (0.01, 0.01, 0.01)


def client(url: str, **options) -> ScannerClient:
    options.setdefault("retry_delays", FAST)
    return ScannerClient(url, **options)


# --- pure parts -------------------------------------------------------------------------------


def test_a_row_reads_like_the_dict_of_its_columns():
    row = Row(Layout(("RSI|5", "close|5", "RSI|15")), [40.0, None, "x"])
    assert row == {"RSI|5": 40.0, "close|5": None, "RSI|15": "x"}
    assert (row["RSI|5"], row.get("close|5"), row.get("nope"), row.get("nope", 1)) == (
        40.0, None, None, 1,
    )  # fmt: skip
    assert "RSI|15" in row and "RSI|60" not in row and len(row) == 3
    with pytest.raises(KeyError):
        row["RSI|60"]


def test_pick_gives_a_tuple_even_of_one_and_none_for_absent_columns():
    row = Row.of({"a": 1.0, "b": 2.0, "c": 3.0})
    assert row.pick(("c", "a")) == (3.0, 1.0)
    assert row.pick(("b",)) == (2.0,)
    assert row.pick(("b", "zz")) == (2.0, None)
    assert row.pick(()) == ()


def test_a_joined_row_has_every_pieces_columns_and_the_later_value_wins_like_update():
    joined = Row.joined([Row.of({"a": 1, "b": 2}), Row.of({"b": 3, "c": 4}), Row.of({"d": 5})],
                        {})
    assert joined == {"a": 1, "b": 3, "c": 4, "d": 5}
    assert joined.pick(("a", "b", "c", "d")) == (1, 3, 4, 5)


def test_tickers_split_alike_share_one_joined_layout():
    left, right = Layout(("a", "b")), Layout(("c",))
    layouts: dict[tuple[int, ...], Layout] = {}
    one = Row.joined([Row(left, [1, 2]), Row(right, [3])], layouts)
    two = Row.joined([Row(left, [4, 5]), Row(right, [6])], layouts)
    other = Row.joined([Row(right, [7]), Row(left, [8, 9])], layouts)  # another order
    assert one.layout is two.layout and other.layout is not one.layout
    assert (one.pick(("c", "a")), two.pick(("c", "a")), other.pick(("c", "a"))) == (
        (3, 1), (6, 4), (7, 8))


names = st.sampled_from(["RSI|5", "RSI|15", "close|5", "close", "MACD.macd|60", "x"])


@given(st.dictionaries(names, st.none() | st.floats() | st.integers()),
       st.lists(names, max_size=8).map(tuple))
def test_pick_matches_dict_get_whatever_the_columns(values, wanted):
    picked, expected = Row.of(values).pick(wanted), tuple(map(values.get, wanted))
    assert len(picked) == len(expected)
    assert all(a is b for a, b in zip(picked, expected, strict=True))  # the same objects, NaN too


def test_request_cells_and_body():
    assert REQUEST.cells == 12
    body = orjson.loads(build_body(REQUEST))
    assert body == {"symbols": {"tickers": list(FOREX), "query": {"types": []}},
                    "columns": list(REQUEST.columns)}
    assert "range" not in body


def test_parse_body_matches_by_s_ignores_strangers_and_reports_missing():
    request = ScanRequest("forex", ("A:X", "A:Y", "A:Z"), ("c1", "c2"))
    body = orjson.dumps({"totalCount": 3, "data": [
        {"s": "A:Y", "d": [3, 4]}, {"s": "A:STRANGER", "d": [9, 9]}, {"s": "A:X", "d": [1, None]},
    ]})
    rows, missing = parse_body(request, body)
    assert rows == {"A:X": {"c1": 1, "c2": None}, "A:Y": {"c1": 3, "c2": 4}}
    assert missing == {"A:Z"}


def test_replies_to_requests_for_the_same_columns_share_one_layout():
    """Built once and reused tick after tick, with the pickers it caches."""
    first = ScanRequest("forex", ("A:X",), ("c1", "c2"))
    again = ScanRequest("forex", ("A:Y",), tuple(["c1", "c2"]))
    other = ScanRequest("forex", ("A:X",), ("c2", "c1"))
    rows = [parse_body(r, orjson.dumps({"data": [{"s": t, "d": d}]}))[0][t]
            for r, t, d in ((first, "A:X", [1, 2]), (again, "A:Y", [3, 4]), (other, "A:X", [5, 6]))]
    assert rows[0].layout is rows[1].layout is not rows[2].layout
    assert [row.pick(("c1", "c2")) for row in rows] == [(1, 2), (3, 4), (6, 5)]


def test_a_key_whose_columns_are_a_whole_run_gets_the_run_itself():
    """No tuple picked per key out of every moved row: the run's own (the planner orders a
    timeframe's columns as the ``full`` profile lists them); any other choice is picked."""
    layout = Layout(("a|5", "b|5", "a|60", "b|60", "c|60"))
    run = (1.0, 2.0)
    whole = layout.run_picker(("a|5", "b|5"))
    assert whole is not None and whole[0] == 0 and whole[1](run) is run
    swapped = layout.run_picker(("b|5", "a|5"))
    assert swapped is not None and swapped[1](run) == (2.0, 1.0)
    part = layout.run_picker(("a|60", "b|60"))
    assert part is not None and part[0] == 1 and part[1]((3.0, 4.0, 5.0)) == (3.0, 4.0)


def test_a_pick_of_adjacent_columns_is_a_tuple_whatever_the_cells_are():
    """One slice, and a tuple even of ``parse_body``'s lists: the composer compares a key's
    inputs with the tuple it last computed from, and a list is never equal to a tuple."""
    layout = Layout(("a|5", "b|5", "c|5", "d|5"))
    for cells in ([1.0, 2.0, 3.0, 4.0], (1.0, 2.0, 3.0, 4.0)):
        pick = layout.picker(("b|5", "c|5"))
        assert pick is not None and pick(cells) == (2.0, 3.0)
        apart = layout.picker(("a|5", "d|5"))
        assert apart is not None and apart(cells) == (1.0, 4.0)


@pytest.mark.parametrize(("body", "kind", "retryable"), [
    (b"", "throttled", True),
    (b"  \n", "throttled", True),
    (b"<html>", "bad_body", True),
    (b"[]", "bad_body", False),
    (b'{"data": 3}', "bad_body", False),
    (b'{"data": [{"d": [1]}]}', "bad_body", False),
    (b'{"data": [{"s": "A:X", "d": [1, 2, 3]}]}', "bad_body", False),
    (b'{"data": [{"s": "A:X", "d": null}]}', "bad_body", False),
    (b'{"totalCount": 0, "error": "bad filter", "data": null}', "bad_request", False),
])
def test_parse_body_errors(body, kind, retryable):
    error = parse_body(ScanRequest("forex", ("A:X",), ("c1", "c2")), body)
    assert isinstance(error, ScanError)
    assert (error.kind, error.retryable) == (kind, retryable)


@pytest.mark.parametrize(("status", "body", "kind", "retryable"), [
    (400, b'{"totalCount":0,"error":"Unknown field \\"RSI|1D\\"","data":null}',
     "bad_column", False),
    (400, b'{"totalCount":0,"error":"bad types","data":null}', "bad_request", False),
    (404, b"404 page not found", "not_found", False),
    (429, b"", "throttled", True),
    (403, b"", "blocked", True),
    (503, b"", "blocked", True),
    (500, b"", "server", True),
    (502, b"", "server", True),
    (418, b"teapot", "bad_request", False),
])
def test_classify_status(status, body, kind, retryable):
    error = classify_status(status, body)
    assert (error.kind, error.retryable, error.status) == (kind, retryable, status)
    if kind == "bad_column":
        assert error.column == "RSI|1D"


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_backoff_is_full_jitter_and_honours_retry_after_capped():
    rng = random.Random(1)
    plain = ScanError("server", "x", True)
    delays = [backoff_delay(1, (0.5, 1.5, 4.0), plain, rng, 30.0) for _ in range(200)]
    assert all(0 <= d <= 1.5 for d in delays)
    assert max(delays) > 1.0
    assert min(delays) < 0.5
    assert backoff_delay(9, (0.5, 1.5, 4.0), plain, rng, 30.0) <= 4.0
    throttled = ScanError("throttled", "x", True, 429, retry_after=5.0)
    assert backoff_delay(0, (0.5,), throttled, rng, 30.0) == 5.0
    assert backoff_delay(0, (0.5,), throttled, rng, 2.0) == 2.0


def _result(ok: bool, attempts: int = 1) -> ScanResult:
    error = None if ok else ScanError("throttled", "429", True, 429)
    return ScanResult(REQUEST, {}, frozenset(), error, attempts, 0.1)


def test_summarise():
    assert summarise([]) == ("ok", "no requests")
    assert summarise([_result(True), _result(True)]) == ("ok", "2 requests ok")
    assert summarise([_result(True, 3), _result(True)])[0] == "ok"
    assert "after retries" in summarise([_result(True, 3)])[1]
    status, reason = summarise([_result(True), _result(False)])
    assert status == "degraded"
    assert "1 of 2" in reason
    assert "throttled" in reason
    assert summarise([_result(False), _result(False)])[0] == "down"


# --- against the stand-in ---------------------------------------------------------------------


async def test_rows_match_the_standin_values_and_unknown_tickers_are_missing(standin):
    request = ScanRequest("forex", (*FOREX, "FX_IDC:NOSUCH", "BINANCE:BTCUSDT"), REQUEST.columns)
    async with client(standin.url) as scanner:
        result = await scanner.scan(request)
    assert result.ok
    assert result.attempts == 1
    assert result.elapsed > 0
    assert result.missing == {"FX_IDC:NOSUCH", "BINANCE:BTCUSDT"}
    assert set(result.rows) == set(FOREX)
    for ticker, row in result.rows.items():
        assert row["RSI|5"] == standin.state.values(ticker, "5m")["RSI"]
        assert row["close"] == standin.state.values(ticker, "1d")["close"]
        assert row["volume"] is None
    assert standin.state.log[0].user_agent == f"quartsig/{__version__}"


async def test_headers_are_configurable(standin):
    async with client(standin.url, headers={"User-Agent": "custom/1"}) as scanner:
        await scanner.scan(REQUEST)
    assert standin.state.log[0].user_agent == "custom/1"


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 429},
    {"kind": "status", "status": 403},
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 503},
    {"kind": "empty"},
    {"kind": "garbage"},
    {"kind": "reset"},
])
async def test_transient_faults_are_retried_until_success(standin, fault):
    standin.state.add_faults([{**fault, "count": 2}])
    async with client(standin.url) as scanner:
        result = await scanner.scan(REQUEST)
    assert result.ok, result.error
    assert result.attempts == 3
    assert set(result.rows) == set(FOREX)
    assert len(standin.state.log) == 3


async def test_a_slow_answer_times_out_and_is_retried(standin):
    standin.state.add_faults([{"kind": "delay", "seconds": 1.0}])
    async with client(standin.url, timeout=0.2) as scanner:
        started = time.monotonic()
        result = await scanner.scan(REQUEST)
    assert result.ok
    assert result.attempts == 2
    assert time.monotonic() - started < 0.9


async def test_retries_give_up_with_the_last_error(standin):
    standin.state.add_faults([{"kind": "status", "status": 502, "sticky": True}])
    async with client(standin.url) as scanner:
        result = await scanner.scan(REQUEST)
    assert not result.ok
    assert result.attempts == 4
    assert result.error.kind == "server"
    assert result.error.status == 502
    assert result.rows == {}
    assert result.missing == frozenset()


@pytest.mark.parametrize(("fault", "kind"), [
    ({"kind": "status", "status": 400,
      "body": '{"totalCount":0,"error":"bad filter","data":null}'}, "bad_request"),
    ({"kind": "status", "status": 404, "body": "404 page not found"}, "not_found"),
    ({"kind": "status", "status": 200,
      "body": '{"totalCount":1,"data":[{"s":"FX_IDC:USDJPY","d":[1]}]}'}, "bad_body"),
])
async def test_permanent_failures_are_not_retried(standin, fault, kind):
    standin.state.add_faults([{**fault, "sticky": True}])
    async with client(standin.url) as scanner:
        result = await scanner.scan(REQUEST)
    assert result.error is not None
    assert result.error.kind == kind
    assert result.attempts == 1
    assert len(standin.state.log) == 1


async def test_unknown_column_is_reported_with_its_name(standin):
    request = ScanRequest("forex", FOREX, ("RSI|5", "RSI|1D"))
    async with client(standin.url) as scanner:
        result = await scanner.scan(request)
        missing_screener = await scanner.scan(ScanRequest("narnia", FOREX, ("RSI",)))
    assert result.error == ScanError(
        "bad_column", 'Unknown field "RSI|1D"', False, 400, column="RSI|1D"
    )
    assert result.attempts == 1
    assert missing_screener.error.kind == "not_found"
    assert missing_screener.attempts == 1


async def test_retry_after_is_honoured(standin):
    standin.state.add_faults([{"kind": "status", "status": 429, "retry_after": 0.6}])
    async with client(standin.url) as scanner:
        result = await scanner.scan(REQUEST)
    assert result.ok
    assert result.attempts == 2
    first, second = standin.state.log
    assert second.time - first.time >= 0.55


async def test_retry_after_is_capped(standin):
    standin.state.add_faults([{"kind": "status", "status": 429, "retry_after": 3600}])
    async with client(standin.url, max_retry_after=0.2) as scanner:
        started = time.monotonic()
        result = await scanner.scan(REQUEST)
    assert result.ok
    assert time.monotonic() - started < 1.0


async def test_deadline_stops_retries(standin):
    standin.state.add_faults([{"kind": "status", "status": 503, "sticky": True}])
    async with client(standin.url, retry_delays=(0.2,) * 20) as scanner:
        started = time.monotonic()
        result = await scanner.scan(REQUEST, deadline=started + 0.5)
    assert not result.ok
    assert time.monotonic() - started < 0.8  # the deadline, plus scheduling slack
    assert result.attempts >= 2
    # the upstream's 503, unless the deadline cut the last attempt short (full jitter can
    # start one just before it; on a loaded machine even the first may take that long)
    assert result.error.kind in ("blocked", "timeout")


async def test_no_backoff_sleeps_across_the_deadline(standin):
    standin.state.add_faults([{"kind": "status", "status": 429, "retry_after": 10}])
    async with client(standin.url) as scanner:
        started = time.monotonic()
        result = await scanner.scan(REQUEST, deadline=started + 2)
    assert time.monotonic() - started < 1.5  # gave up instead of sleeping 10 s
    assert result.error.kind == "throttled"
    assert result.error.retry_after == 10
    assert result.attempts == 1


async def test_deadline_cuts_a_slow_request(standin):
    standin.state.add_faults([{"kind": "delay", "seconds": 5}])
    async with client(standin.url, timeout=10) as scanner:
        started = time.monotonic()
        result = await scanner.scan(REQUEST, deadline=started + 0.3)
    assert time.monotonic() - started < 1.5  # not the 5 s the stand-in wanted
    assert not result.ok
    assert result.error.kind == "timeout"


async def test_a_passed_deadline_makes_no_request(standin):
    async with client(standin.url) as scanner:
        result = await scanner.scan(REQUEST, deadline=time.monotonic() - 1)
    assert result.error.kind == "timeout"
    assert result.attempts == 0
    assert standin.state.log == []


async def test_concurrency_is_bounded():
    async with running_standin(base_delay=0.15) as server:
        async with client(server.url, concurrency=3) as scanner:
            results = await scanner.scan_all([REQUEST] * 10)
        assert all(result.ok for result in results)
        assert server.state.max_in_flight == 3
        assert len(server.state.log) == 10


async def test_min_start_interval_spaces_request_starts(standin):
    async with client(standin.url, concurrency=4, min_start_interval=0.1) as scanner:
        results = await scanner.scan_all([REQUEST] * 4)
    assert all(result.ok for result in results)
    starts = sorted(entry.time for entry in standin.state.log)
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(starts))


async def test_scan_all_keeps_request_order_and_mixes_outcomes(standin):
    requests = [REQUEST, ScanRequest("narnia", FOREX, ("RSI",)),
                ScanRequest("crypto", ("BINANCE:BTCUSDT",), ("close",))]
    async with client(standin.url) as scanner:
        results = await scanner.scan_all(requests)
    assert [result.request for result in results] == requests
    assert [result.ok for result in results] == [True, False, True]
    assert summarise(results)[0] == "degraded"


async def test_one_session_for_the_clients_life(standin):
    async with client(standin.url) as scanner:
        (session,) = scanner.sessions
        for _ in range(3):
            await scanner.scan(REQUEST)
        await scanner.scan_all([REQUEST] * 3)
        assert scanner.sessions == [session]
    assert session.closed
    # Keep-alive: the sequential scans rode one connection.
    assert len({entry.peer for entry in standin.state.log[:3]}) == 1


async def test_nothing_raises_when_the_scanner_is_unreachable():
    url = f"http://127.0.0.1:{free_port()}"
    async with client(url) as scanner:
        results = await scanner.scan_all([REQUEST, REQUEST])
    assert all(r.error.kind == "connection" and r.attempts == 4 for r in results)
    assert summarise(results)[0] == "down"


async def test_scan_starts_the_client_when_needed_and_close_is_idempotent(standin):
    scanner = client(standin.url)
    try:
        assert (await scanner.scan(REQUEST)).ok
    finally:
        await scanner.close()
        await scanner.close()


async def test_cancellation_propagates(standin):
    standin.state.add_faults([{"kind": "delay", "seconds": 5}])
    async with client(standin.url) as scanner:
        task = asyncio.create_task(scanner.scan(REQUEST))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_requests_queued_past_the_deadline_are_not_sent():
    async with running_standin(base_delay=1.0) as server:
        async with client(server.url, concurrency=1) as scanner:
            started = time.monotonic()
            results = await scanner.scan_all([REQUEST] * 3, deadline=started + 0.3)
        assert time.monotonic() - started < 1.0
        assert [result.error.kind for result in results] == ["timeout"] * 3
        assert sorted(result.attempts for result in results) == [0, 0, 1]
        assert scanner.slots[0].failures <= 1
        assert len(server.state.log) == 1


@pytest.mark.parametrize("sticky", [True, False])
async def test_after_a_429_no_request_of_the_same_scan_all_starts(standin, sticky):
    """Issue 20, point 6: neither a retry nor a request still queued goes after a 429 (the
    held-out storm saw three tries 0.1 s apart); the collector's backoff knocks next."""
    standin.state.add_faults([{"kind": "status", "status": 429, "sticky": sticky}])
    requests = [REQUEST, ScanRequest("crypto", ("BINANCE:BTCUSDT",), ("close",)),
                ScanRequest("america", ("NASDAQ:AAPL",), ("close",))]
    async with client(standin.url, concurrency=1) as scanner:
        results = await scanner.scan_all(requests)
        assert len(standin.state.log) == 1
        assert [result.error.kind for result in results if result.error] == ["throttled"] * 3
        assert sum(result.attempts for result in results) == 1
        again = await scanner.scan_all(requests)  # the next tick may knock again
    if sticky:  # throttled again at its first request: that one is all it sent
        assert len(standin.state.log) == 2 and not any(result.ok for result in again)
    else:
        assert len(standin.state.log) == 4 and all(result.ok for result in again)


# ------------------------------------------------------------------------ the row cache

_TICKERS = ("FX_IDC:EURUSD", "FX_IDC:USDJPY", "FX_IDC:GBPUSD", "BINANCE:BTCUSDT")
_CELLS = st.one_of(st.none(), st.sampled_from([0.5, 1.0, -2.25, 70.0]), st.integers(-3, 3),
                   st.text(max_size=6), st.just({"s": "FX_IDC:EURUSD", "d": [1.0]}),
                   st.just([{"s": "X"}]))
#: One reply's rows: (ticker, cells); tickers outside the request, twice, or with too few
#: cells now and then, and cells that hold ``{"s":`` themselves.
_ROWS = st.lists(st.tuples(st.sampled_from((*_TICKERS, "FX_IDC:ZZZ")),
                           st.lists(_CELLS, min_size=1, max_size=3)), max_size=5)


def _body(rows: list[tuple[str, list[Any]]], shape: str) -> bytes:
    data = [{"s": ticker, "d": cells} for ticker, cells in rows]
    if shape == "extra":
        return orjson.dumps({"totalCount": len(data), "data": data, "more": 1})
    if shape == "spaced":
        return orjson.dumps({"totalCount": len(data), "data": data}, option=orjson.OPT_INDENT_2)
    return orjson.dumps({"totalCount": len(data), "data": data})


def _plain(parsed: Any) -> Any:
    if isinstance(parsed, ScanError):
        return parsed
    rows, missing = parsed
    return {ticker: list(row.cells) for ticker, row in rows.items()}, missing


@given(st.lists(st.tuples(_ROWS, st.sampled_from(["plain", "plain", "extra", "spaced"])),
                min_size=1, max_size=4),
       st.integers(1, 3))
def test_the_row_cache_parses_exactly_what_parse_body_does(replies, width) -> None:
    """Reply after reply to one request, the cache's rows are parse_body's (or its error), and
    a row whose bytes did not move since the last reply is the very same object."""
    request = ScanRequest("forex", _TICKERS[:3], tuple(f"c{i}" for i in range(width)))
    cache = RowCache()
    last: dict[str, tuple[bytes, Row]] = {}
    for rows, shape in replies:
        rows = [(ticker, (cells * width)[:width] if len(cells) > 1 else cells)
                for ticker, cells in rows]
        body = _body(rows, shape)
        got, expected = cache.parse(request, body), parse_body(request, body)
        assert _plain(got) == _plain(expected)
        if isinstance(got, ScanError):
            last = {}
            continue
        # The cache's own path: the compact shape, each ticker once, no row object nested in
        # a cell (else parse_body decides, and nothing is reused).
        fast = (shape == "plain" and len({ticker for ticker, _ in rows}) == len(rows)
                and body.count(b'{"s":') == len(rows))
        for ticker, row in got[0].items():
            piece = orjson.dumps({"s": ticker, "d": list(row.cells)})
            if fast and ticker in last and last[ticker][0] == piece:
                assert row is last[ticker][1]  # not parsed again
        last = {ticker: (orjson.dumps({"s": ticker, "d": list(row.cells)}), row)
                for ticker, row in got[0].items()} if fast else {}


def test_the_row_cache_parses_only_rows_whose_bytes_moved() -> None:
    request = ScanRequest("forex", _TICKERS[:3], ("a", "b"))
    cache = RowCache()
    first = cache.parse(request, _body([(t, [1.0, 2.0]) for t in _TICKERS[:3]], "plain"))
    second = cache.parse(request, _body([(_TICKERS[2], [1.0, 2.5]), (_TICKERS[0], [1.0, 2.0]),
                                         (_TICKERS[1], [1.0, 2.0])], "plain"))
    assert not isinstance(first, ScanError) and not isinstance(second, ScanError)
    assert (cache.parsed, cache.reused) == (4, 2)
    assert second[0][_TICKERS[0]] is first[0][_TICKERS[0]]
    assert second[0][_TICKERS[2]] is not first[0][_TICKERS[2]]
    assert list(second[0][_TICKERS[2]].cells) == [1.0, 2.5]


def test_a_rows_cells_are_left_alone_by_the_cycle_collector() -> None:
    """A row of numbers from the scanner client (most of a tick's) is not walked by every full
    collection again: its cells are a tuple, which the collector untracks at its first look.
    parse_body, the fallback, keeps orjson's list (see Row.cells)."""
    import gc

    request = ScanRequest("forex", _TICKERS[:1], ("a", "b", "c"))
    body = _body([(_TICKERS[0], [1.0, None, 3])], "plain")
    parsed = RowCache().parse(request, body)
    assert not isinstance(parsed, ScanError)
    row = parsed[0][_TICKERS[0]]
    assert row.cells == (1.0, None, 3) and row["c"] == 3
    gc.collect()
    assert not gc.is_tracked(row.cells)
    whole = parse_body(request, body)
    assert not isinstance(whole, ScanError) and list(whole[0][_TICKERS[0]].cells) == [1.0, None, 3]
    joined = Row.joined([Row.of({"a": 1.0}), Row.of({"b": 2.0})], {})
    assert tuple(joined.cells) == (1.0, 2.0) and dict(joined) == {"a": 1.0, "b": 2.0}
    gc.collect()
    assert not gc.is_tracked(joined.cells)


def test_the_row_cache_reuses_a_row_only_for_the_very_same_bytes() -> None:
    """Rows are compared where they lie in the reply, not split off: bytes that only begin
    with the last reply's row (here, then a stray brace) are not that row."""
    request = ScanRequest("forex", _TICKERS[:2], ("a", "b"))
    cache = RowCache()
    row = b'{"s":"FX_IDC:EURUSD","d":[1.0,2.0]}'
    head = b'{"totalCount":2,"data":['
    first = cache.parse(request, head + row + b"]}")
    assert not isinstance(first, ScanError)
    for body in (head + row + b"}]}", head + row + b'},{"s":"FX_IDC:USDJPY","d":[1,2]}]}',
                 head + row + b' ,{"s":"FX_IDC:USDJPY","d":[1,2]}]}'):
        got, expected = cache.parse(request, body), parse_body(request, body)
        assert _plain(got) == _plain(expected)
        first = cache.parse(request, head + row + b"]}")  # (a reply it did not take: anew)
        assert not isinstance(first, ScanError)
    again = cache.parse(request, head + row + b',{"s":"FX_IDC:USDJPY","d":[3,4]}]}')
    assert not isinstance(again, ScanError)
    assert again[0]["FX_IDC:EURUSD"] is first[0]["FX_IDC:EURUSD"]  # the same bytes, in place
    assert again[0]["FX_IDC:USDJPY"].cells == (3, 4)


def test_the_row_cache_reuses_rows_beside_braces_in_cells() -> None:
    """A brace in a cell (within a string, or an object) is not a row's start: the rows are
    then found by their own ``{"s":``, and still reused."""
    request = ScanRequest("forex", _TICKERS[:2], ("a", "b"))
    cache = RowCache()
    for cells in (["{x", 1.0], [{"k": "}{"}, 1.0]):
        rows = [(_TICKERS[0], cells), (_TICKERS[1], [2.0, 3.0])]
        first = cache.parse(request, _body(rows, "plain"))
        again = cache.parse(request, _body(rows, "plain"))
        assert not isinstance(first, ScanError) and not isinstance(again, ScanError)
        assert _plain(again) == _plain(parse_body(request, _body(rows, "plain")))
        assert all(again[0][ticker] is first[0][ticker] for ticker in _TICKERS[:2])


# ------------------------------------------------------------------------ runs of a moved row

#: Cells as text, as an upstream may write them: numbers in several spellings, null, true,
#: false, spaces, and now and then what is not plain (a string or an array holding a comma)
#: or not JSON at all (an empty cell, a bare word).
_PLAIN_TOKENS = ["1", "1.0", "1.50", "15e-1", "-0.0", "0", "25.5", "70", "-100.25",
                 "0.30000000000000004", "null", "true", "false", " 2 ", "3"]
_ODD_TOKENS = ['"x,y"', "[1,2]", "", "nan", "{}", "123456789012345678901234567890"]


@st.composite
def _token(draw: Any) -> str:
    """A plain cell mostly; one in a few hundred odd (so that most replies parse)."""
    if draw(st.integers(0, 299)) == 0:
        return str(draw(st.sampled_from(_ODD_TOKENS)))
    return str(draw(st.sampled_from(_PLAIN_TOKENS)))
#: Runs of columns, one per timeframe suffix, in the planner's order (frame_order).
_SUFFIXES = ("", "|1", "|5", "|60")


def _run_columns(sizes: list[int]) -> tuple[str, ...]:
    return tuple(f"c{i}{suffix}" for suffix, size in zip(_SUFFIXES, sizes, strict=False)
                 for i in range(size))


def _reply_of(rows: list[tuple[str, list[str]]]) -> bytes:
    text = ",".join(f'{{"s":"{ticker}","d":[{",".join(cells)}]}}' for ticker, cells in rows)
    return b'{"totalCount":%d,"data":[%s]}' % (len(rows), text.encode())


def _strict(parsed: Any) -> Any:
    """Rows as comparable values that tell 1 from 1.0 and 0.0 from -0.0."""
    if isinstance(parsed, ScanError):
        return parsed
    rows, missing = parsed
    return {ticker: [(type(cell).__name__, repr(cell)) for cell in row.cells]
            for ticker, row in rows.items()}, missing


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_moved_rows_runs_are_what_parse_body_makes_of_it(data: st.DataObject) -> None:
    """Reply after reply, rows whose runs of columns (one per timeframe) move now and then,
    each spelt in its own way: the row cache's rows are parse_body's, cell for cell, and a
    run it says did not move (not in ``Row.moved``) holds the very values of ``Row.since``,
    which is what lets the composer skip the keys of that run."""
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
    columns = _run_columns(sizes)
    request = ScanRequest("forex", _TICKERS[:3], columns)
    cache = RowCache()
    cells: dict[str, list[str]] = {}
    for _ in range(data.draw(st.integers(2, 6))):
        for ticker in _TICKERS[:3]:
            old = cells.get(ticker)
            runs, at = [], 0
            for size in sizes:
                if old is None or data.draw(st.integers(0, 3)) == 0:
                    runs.append(data.draw(st.lists(_token(), min_size=size, max_size=size)))
                else:
                    runs.append(old[at:at + size])
                at += size
            cells[ticker] = [token for run in runs for token in run]
            if data.draw(st.integers(0, 60)) == 0:  # a cell too many or too few
                grown = [*cells[ticker], "1"]
                cells[ticker] = cells[ticker][:-1] if len(cells[ticker]) > 1 else grown
        order = data.draw(st.permutations(_TICKERS[:3]))
        body = _reply_of([(ticker, cells[ticker]) for ticker in order])
        got, expected = cache.parse(request, body), parse_body(request, body)
        assert _strict(got) == _strict(expected)
        if isinstance(got, ScanError):
            continue
        for row in got[0].values():
            if row.since is None:
                continue
            assert row.runs is not None and row.since.runs is not None
            for run, (start, stop) in enumerate(row.layout.blocks):
                if not row.moved >> run & 1:
                    assert row.runs[run] is row.since.runs[run]
                    assert _strict(({"": Row(row.layout, row.since.cells)}, frozenset()))[0][
                        ""][start:stop] == _strict(({"": row}, frozenset()))[0][""][start:stop]
