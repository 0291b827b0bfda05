"""The stand-in scanner answers as scanner-protocol.md says TradingView does."""

from __future__ import annotations

import asyncio
import itertools
import math
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from quartsig.demo.market import DEFAULT_UNIVERSE, NO_TECHNICALS, synthetic_universe
from quartsig.demo.scanner import parse_columns
from quartsig.domain.columns import FULL_COLUMNS
from quartsig.domain.timeframes import SUFFIXES, TIMEFRAMES, column
from tests.support.scanning import (
    RunningStandin,
    running_standin,
    standin_fixture,  # noqa: F401
)
from tests.support.standin import Standin

FOREX = ("FX_IDC:USDJPY", "FX_IDC:EURUSD", "FX_IDC:GBPUSD", "FX_IDC:NZDUSD", "FX_IDC:USDCHF")


@pytest_asyncio.fixture(name="http")
async def http_fixture() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def scan_body(tickers: Any, columns: Any, **extra: Any) -> bytes:
    return orjson.dumps({"symbols": {"tickers": tickers, "query": {"types": []}},
                         "columns": columns, **extra})


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes | str
) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    async with http.post(url, data=body) as resp:
        return resp.status, await resp.read(), resp.headers


async def scan(
    http: aiohttp.ClientSession, server: RunningStandin, screener: str, tickers: Any, columns: Any
) -> dict[str, Any]:
    status, body, _ = await post(http, f"{server.url}/{screener}/scan", scan_body(tickers, columns))
    assert status == 200, body
    return orjson.loads(body)


def by_ticker(payload: dict[str, Any], columns: list[str]) -> dict[str, dict[str, Any]]:
    return {row["s"]: dict(zip(columns, row["d"], strict=True)) for row in payload["data"]}


# --- the protocol --------------------------------------------------------------------------


async def test_scan_returns_requested_columns_in_order_matched_by_s(standin, http):
    columns = ["Recommend.All|5", "RSI|5", "RSI|1", "close", "description"]
    payload = await scan(http, standin, "forex", list(FOREX), columns)
    assert payload["totalCount"] == len(FOREX) == len(payload["data"])
    rows = by_ticker(payload, columns)
    assert set(rows) == set(FOREX)
    for ticker, row in rows.items():
        assert row["RSI|5"] == standin.state.values(ticker, "5m")["RSI"]
        assert row["close"] == standin.state.values(ticker, "1d")["close"]
        assert row["description"] == ticker.split(":")[1]
    assert rows["FX_IDC:USDJPY"]["RSI|5"] != rows["FX_IDC:USDJPY"]["RSI|1"]


async def test_unknown_and_wrong_screener_tickers_are_left_out(standin, http):
    tickers = ["FX_IDC:USDJPY", "FX_IDC:NOSUCH", "BINANCE:BTCUSDT", "NASDAQ:AAPL"]
    payload = await scan(http, standin, "forex", tickers, ["close"])
    assert [row["s"] for row in payload["data"]] == ["FX_IDC:USDJPY"]
    payload = await scan(http, standin, "crypto", tickers, ["close"])
    assert [row["s"] for row in payload["data"]] == ["BINANCE:BTCUSDT"]


async def test_every_full_column_on_every_timeframe_is_accepted(standin, http):
    columns = [column(base, tf) for base in FULL_COLUMNS for tf in TIMEFRAMES]
    payload = await scan(http, standin, "crypto", ["BINANCE:BTCUSDT"], columns)
    (row,) = payload["data"]
    assert len(row["d"]) == len(columns) == 910


@pytest.mark.parametrize("bad", ["RSI|1D", "RSI|7", "RSI|", "Nonsense", "rsi", "RSI|5|5"])
async def test_unknown_field_is_a_400_naming_it(standin, http, bad):
    status, body, _ = await post(
        http, f"{standin.url}/forex/scan", scan_body(["FX_IDC:USDJPY"], ["RSI|5", bad])
    )
    assert status == 400
    assert orjson.loads(body) == {"totalCount": 0, "error": f'Unknown field "{bad}"', "data": None}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        orjson.dumps({"columns": ["close"]}),
        orjson.dumps({"symbols": {"tickers": "FX_IDC:USDJPY"}, "columns": ["close"]}),
        orjson.dumps({"symbols": {"tickers": [1, 2]}, "columns": ["close"]}),
        orjson.dumps({"symbols": {"tickers": ["FX_IDC:USDJPY"]}, "columns": "close"}),
        orjson.dumps({"symbols": {"tickers": ["FX_IDC:USDJPY"]}, "columns": [3]}),
        orjson.dumps({"symbols": {"tickers": [], "query": {"types": "x"}}, "columns": []}),
        orjson.dumps({"symbols": {"tickers": [], "query": []}, "columns": []}),
        orjson.dumps({"symbols": {"tickers": []}, "columns": [], "range": "0,50"}),
    ],
)
async def test_malformed_bodies_are_400_with_the_error_shape(standin, http, body):
    status, raw, _ = await post(http, f"{standin.url}/forex/scan", body)
    assert status == 400
    payload = orjson.loads(raw)
    assert payload["totalCount"] == 0
    assert payload["data"] is None
    assert isinstance(payload["error"], str)
    assert payload["error"]


async def test_query_is_optional(standin, http):
    body = orjson.dumps({"symbols": {"tickers": ["FX_IDC:USDJPY"]}, "columns": ["close"]})
    status, raw, _ = await post(http, f"{standin.url}/forex/scan", body)
    assert status == 200
    assert len(orjson.loads(raw)["data"]) == 1


async def test_unknown_screener_is_404(standin, http):
    status, _, _ = await post(
        http, f"{standin.url}/narnia/scan", scan_body(["FX_IDC:USDJPY"], ["close"])
    )
    assert status == 404
    assert standin.state.log[-1].outcome == "not_found"


async def test_rows_are_shuffled(standin, http):
    tickers = sorted(DEFAULT_UNIVERSE["forex"])[:20]
    orders = [
        [row["s"] for row in (await scan(http, standin, "forex", tickers, ["close"]))["data"]]
        for _ in range(4)
    ]
    assert all(sorted(order) == tickers for order in orders)
    assert any(order != tickers for order in orders)
    assert len({tuple(order) for order in orders}) > 1


async def test_nulls_where_tradingview_gives_them(standin, http):
    columns = ["volume", "VWMA|60", "Rec.VWMA|60", "Recommend.All", "Recommend.MA|5", "close"]
    no_tech = sorted(t for t in NO_TECHNICALS if t.startswith("FX_IDC:"))
    payload = await scan(http, standin, "forex", ["FX_IDC:USDJPY", *no_tech], columns)
    rows = by_ticker(payload, columns)
    usdjpy = rows["FX_IDC:USDJPY"]
    assert usdjpy["volume"] is usdjpy["VWMA|60"] is usdjpy["Rec.VWMA|60"] is None
    assert isinstance(usdjpy["Recommend.All"], float)
    for ticker in no_tech:
        assert rows[ticker]["Recommend.All"] is None
        assert rows[ticker]["Recommend.MA|5"] is None
        assert isinstance(rows[ticker]["close"], float)
    crypto = by_ticker(await scan(http, standin, "crypto", ["BINANCE:BTCUSDT"], columns), columns)
    assert all(value is not None for value in crypto["BINANCE:BTCUSDT"].values())


# --- values ----------------------------------------------------------------------------------


def test_ratings_are_derived_from_votes():
    state = Standin(seed=3)
    seen_ma = seen_other = 0
    for _step in range(5):
        tickers = sorted(DEFAULT_UNIVERSE["crypto"])[:10] + sorted(DEFAULT_UNIVERSE["forex"])[:5]
        for ticker in tickers:
            for tf in TIMEFRAMES:
                v = state.values(ticker, tf)
                assert 0 <= v["RSI"] <= 100
                assert 0 <= v["Stoch.K"] <= 100
                assert -100 <= v["W.R"] <= 0
                assert v["low"] <= min(v["open"], v["close"])
                assert max(v["open"], v["close"]) <= v["high"]
                for rec in ("Rec.Stoch.RSI", "Rec.WR", "Rec.BBPower", "Rec.UO", "Rec.Ichimoku",
                            "Rec.HullMA9"):
                    assert v[rec] in (-1, 0, 1)
                ma, other, both = v["Recommend.MA"], v["Recommend.Other"], v["Recommend.All"]
                assert -1 <= ma <= 1
                assert -1 <= other <= 1
                assert both == pytest.approx((ma + other) / 2)
                assert math.isclose(other * 11, round(other * 11), abs_tol=1e-9)
                inputs = [v[f"{k}{n}"] for k in ("EMA", "SMA") for n in (10, 20, 30, 50, 100, 200)]
                if v["Rec.VWMA"] is not None and None not in inputs:  # all 15 votes present
                    assert math.isclose(ma * 15, round(ma * 15), abs_tol=1e-9)
                    seen_ma += 1
                seen_other += 1
        state.step()
    assert seen_ma
    assert seen_other


def test_values_are_identical_between_steps_and_reproducible_from_the_seed():
    one, two, other = Standin(seed=7), Standin(seed=7), Standin(seed=8)
    first = dict(one.values("FX_IDC:USDJPY", "5m"))
    assert one.values("FX_IDC:USDJPY", "5m") == first
    one.step(3)
    two.step(3)
    # Asked at different moments, the same seed tells the same story.
    assert one.values("FX_IDC:USDJPY", "5m") == two.values("FX_IDC:USDJPY", "5m")
    assert other.values("FX_IDC:USDJPY", "5m") != first


@pytest.mark.parametrize(("share", "low", "high"), [(0.0, 0, 0), (1.0, 200, 200), (0.5, 60, 140)])
def test_change_share_controls_how_many_cells_move(share, low, high):
    state = Standin(seed=1)
    state.config.update({"change_share": share})
    cells = [(t, tf) for t in sorted(DEFAULT_UNIVERSE["forex"])[:20] for tf in TIMEFRAMES]
    before = {cell: state.values(*cell)["close"] for cell in cells}
    state.step()
    moved = sum(state.values(*cell)["close"] != before[cell] for cell in cells)
    assert low <= moved <= high


def test_values_evolve_plausibly():
    state = Standin(seed=2)
    closes = [state.values("FX_IDC:EURUSD", "1h")["close"]]
    for _ in range(200):
        state.step()
        closes.append(state.values("FX_IDC:EURUSD", "1h")["close"])
    assert len(set(closes)) > 20
    assert all(0.5 < close < 2.0 for close in closes)
    assert max(abs(b / a - 1) for a, b in itertools.pairwise(closes)) < 0.05


def test_set_values_pins_components_and_ratings_follow():
    state = Standin()
    for n in (10, 20, 30, 50, 100, 200):
        state.set_values("BINANCE:BTCUSDT", "1h", {f"EMA{n}": 1.0, f"SMA{n}": 1.0})
    state.set_values("BINANCE:BTCUSDT", "1h", {
        "close": 2.0, "Rec.Ichimoku": 1, "Rec.VWMA": 1, "Rec.HullMA9": 1})
    assert state.values("BINANCE:BTCUSDT", "1h")["Recommend.MA"] == 1.0
    state.step()
    assert state.values("BINANCE:BTCUSDT", "1h")["close"] == 2.0
    state.clear_values()
    assert state.values("BINANCE:BTCUSDT", "1h")["close"] != 2.0
    with pytest.raises(ValueError, match="unknown column"):
        state.set_values("BINANCE:BTCUSDT", "1h", {"bogus": 1})


def test_parse_columns():
    assert parse_columns(["RSI|5", "close", "EMA200|1M"]) == [
        ("RSI", "5m"), ("close", "1d"), ("EMA200", "1M")]
    assert parse_columns(["RSI|60", "RSI|1D"]) == "RSI|1D"
    assert set(SUFFIXES.values()) - {""} == {"|1", "|5", "|15", "|30", "|60", "|120", "|240",
                                            "|1W", "|1M"}


def test_synthetic_universe():
    universe = synthetic_universe(120, 60, 30)
    assert {k: len(v) for k, v in universe.items()} == {"forex": 120, "crypto": 60, "america": 30}
    state = Standin(universe=universe)
    gaps = [t for t in universe["forex"] if state.values(t, "1d")["Recommend.All"] is None]
    assert len(gaps) == 2  # every 50th


# --- knobs over HTTP --------------------------------------------------------------------------


async def test_step_and_determinism_over_http(standin, http):
    columns = ["close", "RSI|5", "Recommend.All|15"]
    first = by_ticker(await scan(http, standin, "forex", list(FOREX), columns), columns)
    again = by_ticker(await scan(http, standin, "forex", list(FOREX), columns), columns)
    assert first == again
    async with http.post(f"{standin.url}/_standin/step", json={"count": 2}) as resp:
        assert (await resp.json())["step"] == 2
    later = by_ticker(await scan(http, standin, "forex", list(FOREX), columns), columns)
    assert later != first


async def test_status_fault_with_retry_after_is_consumed_per_request(standin, http):
    async with http.post(f"{standin.url}/_standin/faults",
                         json=[{"kind": "status", "status": 429, "retry_after": 2, "count": 2}]):
        pass
    url, body = f"{standin.url}/forex/scan", scan_body(list(FOREX), ["close"])
    for _ in range(2):
        status, _, headers = await post(http, url, body)
        assert status == 429
        assert headers["Retry-After"] == "2"
    status, _, _ = await post(http, url, body)
    assert status == 200
    assert [e.outcome for e in standin.state.log] == ["fault:status", "fault:status", "ok"]


async def test_sticky_fault_applies_until_cleared(standin, http):
    await http.post(f"{standin.url}/_standin/faults",
                    json={"kind": "status", "status": 503, "sticky": True})
    url, body = f"{standin.url}/forex/scan", scan_body(list(FOREX), ["close"])
    assert [(await post(http, url, body))[0] for _ in range(3)] == [503, 503, 503]
    async with http.delete(f"{standin.url}/_standin/faults") as resp:
        assert resp.status == 200
    assert (await post(http, url, body))[0] == 200


async def test_empty_garbage_delay_and_reset_faults(standin, http):
    standin.state.add_faults([
        {"kind": "empty"},
        {"kind": "garbage"},
        {"kind": "delay", "seconds": 0.3},
        {"kind": "reset"},
        {"kind": "status", "status": 400,
         "body": '{"totalCount":0,"error":"bad filter","data":null}'},
    ])
    url, body = f"{standin.url}/forex/scan", scan_body(list(FOREX), ["close"])
    status, raw, _ = await post(http, url, body)
    assert status == 200
    assert raw == b""
    status, raw, _ = await post(http, url, body)
    assert status == 200
    assert raw.startswith(b"<html>")
    started = time.monotonic()
    status, raw, _ = await post(http, url, body)
    assert status == 200
    assert time.monotonic() - started >= 0.3
    assert len(orjson.loads(raw)["data"]) == len(FOREX)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, url, body)
    status, raw, _ = await post(http, url, body)
    assert status == 400
    assert orjson.loads(raw)["error"] == "bad filter"


async def test_bad_fault_is_refused(standin, http):
    async with http.post(f"{standin.url}/_standin/faults", json=[{"kind": "explode"}]) as resp:
        assert resp.status == 400
    assert not standin.state.faults


async def test_request_log_and_stats(standin, http):
    await scan(http, standin, "forex", list(FOREX), ["close", "RSI"])
    async with http.get(f"{standin.url}/_standin/requests") as resp:
        (entry,) = await resp.json()
    assert entry["screener"] == "forex"
    assert entry["tickers"] == list(FOREX)
    assert entry["columns"] == ["close", "RSI"]
    assert entry["cells"] == 10
    assert entry["outcome"] == "ok"
    assert entry["rows"] == 5
    assert entry["peer"].startswith("127.0.0.1")
    async with http.get(f"{standin.url}/_standin/stats") as resp:
        assert (await resp.json())["requests"] == 1
    async with http.delete(f"{standin.url}/_standin/requests"):
        pass
    assert standin.state.log == []


async def test_config_base_delay_and_auto_step(standin, http):
    async with http.post(f"{standin.url}/_standin/config",
                         json={"base_delay": 0.2, "step_every": 0.1}) as resp:
        assert (await resp.json()) == {"change_share": 0.3, "step_every": 0.1, "base_delay": 0.2}
    started = time.monotonic()
    await scan(http, standin, "forex", list(FOREX), ["close"])
    assert time.monotonic() - started >= 0.2
    await asyncio.sleep(0.35)
    assert standin.state.step_count >= 2
    async with http.post(f"{standin.url}/_standin/config", json={"step_every": None}):
        pass
    steps = standin.state.step_count
    await asyncio.sleep(0.25)
    assert standin.state.step_count == steps
    async with http.post(f"{standin.url}/_standin/config", json={"change_share": 2}) as resp:
        assert resp.status == 400


async def test_values_knob_over_http(standin, http):
    async with http.post(f"{standin.url}/_standin/values", json={
        "ticker": "FX_IDC:USDJPY", "timeframe": "5m", "values": {"RSI": 12.5, "Recommend.All": 0.6}
    }) as resp:
        assert resp.status == 200
    columns = ["RSI|5", "Recommend.All|5"]
    rows = by_ticker(await scan(http, standin, "forex", ["FX_IDC:USDJPY"], columns), columns)
    assert rows["FX_IDC:USDJPY"] == {"RSI|5": 12.5, "Recommend.All|5": 0.6}
    async with http.post(f"{standin.url}/_standin/values", json={"ticker": "X"}) as resp:
        assert resp.status == 400


async def test_universe_can_be_given():
    async with running_standin(universe={"forex": ["FX:AAA"]}) as server, \
            aiohttp.ClientSession() as http:
        payload = await scan(http, server, "forex", ["FX:AAA", "FX_IDC:USDJPY"], ["close"])
        assert [row["s"] for row in payload["data"]] == ["FX:AAA"]
        status, _, _ = await post(http, f"{server.url}/crypto/scan", scan_body([], ["close"]))
        assert status == 404


async def test_module_runs_prints_its_url_and_stops_on_sigterm():
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.standin", "--port", "0", "--seed", "4",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(15):
            url = (await process.stdout.readline()).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http, http.post(
            f"{url}/forex/scan", data=scan_body(["FX_IDC:USDJPY"], ["close"])
        ) as resp:
            assert resp.status == 200
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_demo_scanner_serves_scans_and_has_no_fault_knobs():
    """``--demo`` serves :mod:`quartsig.demo`: the scan route moving by itself, and nothing a
    local process could use to make it misbehave."""
    from quartsig.demo import serve_standin as serve_demo

    runner, url = await serve_demo(step_every=0.05)
    try:
        async with aiohttp.ClientSession() as http:
            body = scan_body(["FX_IDC:USDJPY"], ["close"])
            status, raw, _ = await post(http, f"{url}/forex/scan", body)
            assert status == 200
            first = orjson.loads(raw)["data"][0]["d"]
            async with asyncio.timeout(30):  # it moves by itself, every step_every
                for _ in itertools.count():
                    raw = (await post(http, f"{url}/forex/scan", body))[1]
                    if orjson.loads(raw)["data"][0]["d"] != first:
                        break
                    await asyncio.sleep(0.05)
            fault = orjson.dumps({"kind": "status", "status": 503, "sticky": True})
            for method, path in [("POST", "faults"), ("GET", "requests"), ("POST", "step"),
                                 ("POST", "config"), ("POST", "values")]:
                async with http.request(method, f"{url}/_standin/{path}", data=fault) as resp:
                    assert resp.status in (404, 405), (method, path, resp.status)
            assert (await post(http, f"{url}/forex/scan", body))[0] == 200
    finally:
        await runner.cleanup()
