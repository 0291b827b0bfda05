"""The composer: merging a tick's results, publishing only changes, charging failures.

``merge_results`` and ``Collector.compose`` (the collector's composer) are driven with
hand-built ``ScanResult``s whose values come from the stand-in's pure value model, through the
real built-in profiles, a real ``Hub`` and real ``Connection``s.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from quartsig.domain.model import Key, Row, ScanError, ScanResult
from quartsig.domain.timeframes import column, frame_order
from quartsig.feed.composer import merge_results
from quartsig.upstream.planner import Limits
from quartsig.upstream.scanner import RowCache, layout_for, parse_body
from tests.test_collector import (
    BTC,
    EURUSD,
    FULL,
    NOWHERE,
    PROFILES,
    SUMMARY,
    USDJPY,
    Market,
    apply,
    attach,
    collector,
    counting,
    failed,
    hub_of,
    messages,
    ok,
    publish,
    request,
)

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


# ------------------------------------------------------------------------ incremental ticks

#: Cell values as TradingView (or a broken scanner) may send them, few enough that a cell
#: often keeps its value or gets an equal one of another type (1 and 1.0, 0.0 and -0.0).
_CELL = st.sampled_from([None, 0.0, -0.0, 1, 1.0, 25.0, 25.5, 70.0, 80.0, -1.0, -100.0, 0.3,
                         -0.6, 0.05, 2**70, float("nan"), "x", True])
_TFS = ("5m", "1h")


def _cells(data: st.DataObject, before: list[Any] | None) -> list[Any]:
    """A row's cells for the next tick: most stay, some move (all, on the first tick)."""
    if before is None:
        return data.draw(st.lists(_CELL, min_size=len(FULL.columns), max_size=len(FULL.columns)))
    if data.draw(st.booleans()):
        return before  # this key's inputs stand still
    moves = data.draw(st.lists(st.one_of(st.none(), st.none(), _CELL),
                               min_size=len(FULL.columns), max_size=len(FULL.columns)))
    return [old if move is None else move for old, move in zip(before, moves, strict=True)]


async def _both_paths(data: st.DataObject) -> None:
    keys = [Key(profile, symbol, tf) for profile in ("full", "summary")
            for symbol in (USDJPY, EURUSD) for tf in _TFS]
    columns = [column(base, tf) for tf in _TFS for base in FULL.columns]
    # Today's path: every row parsed anew, every changed key's whole data computed and
    # diffed by the hub.
    whole = {name: dataclasses.replace(profile, compute_changes=None)
             for name, profile in PROFILES.items()}
    new, old = collector(wall=lambda: 1.7e9), collector(whole, wall=lambda: 1.7e9)
    conns = {col: attach(hub_of(col), *keys) for col in (new, old)}
    cells: dict[tuple[str, str], list[Any] | None] = {(s, tf): None
                                                     for s in (USDJPY, EURUSD) for tf in _TFS}
    made: dict[str, tuple[list[Any], Row]] = {}
    for _ in range(data.draw(st.integers(2, 5))):
        for place in cells:
            cells[place] = _cells(data, cells[place])
        rows = {}
        for symbol in (USDJPY, EURUSD):
            flat = [value for tf in _TFS for value in cells[symbol, tf] or ()]
            if symbol not in made or made[symbol][0] != flat or data.draw(st.booleans()):
                # A row whose cells moved is new; one that did not is the very same row, as
                # the scanner client's RowCache hands it back (or, now and then, a new one).
                made[symbol] = (flat, Row.of(dict(zip(columns, flat, strict=True))))
            rows[symbol] = made[symbol][1]
        results = {
            new: [ScanResult(request([USDJPY, EURUSD], columns), rows, frozenset(), None, 1, 0.0)],
            # Today's path parses every row anew: never the same row object twice.
            old: [ok(request([USDJPY, EURUSD], columns),
                     {symbol: dict(row) for symbol, row in rows.items()})],
        }
        frames = {}
        for col in (new, old):
            batch = col.compose(keys, results[col])
            if col is old:
                batch.changes = {}  # the hub diffs whole values, as it always did
            else:
                changed = {key for key, (_, delta) in batch.changes.items() if delta}
            hub_of(col).apply(batch)
            frames[col] = conns[col].take()
        assert frames[new] == frames[old]  # byte for byte: the same updates, in order
        sent = [] if frames[new] is None else orjson.loads(frames[new])
        sent = sent if isinstance(sent, list) else [sent]
        updated = {Key(m["profile"], m["symbol"], m["tf"]) for m in sent if m["type"] == "update"}
        assert updated <= changed  # the batch names every key whose outputs changed
    for key in keys:  # what a newcomer would get: equal values (1 may stay 1.0, as ever)
        assert hub_of(new).entries[key].data == hub_of(old).entries[key].data
    late = {col: attach(hub_of(col), *keys, user=2) for col in (new, old)}
    snapshots = {col: orjson.loads(late[col].take() or "[]") for col in (new, old)}
    assert snapshots[new] == snapshots[old]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_incremental_ticks_send_exactly_what_whole_recomputes_did(data: st.DataObject) -> None:
    """Random ticks through the incremental path (``compute_changes``, changes handed to the
    hub) and through today's (whole data, diffed by the hub): the same frames."""
    asyncio.run(_both_paths(data))


# ------------------------------------------------------------------------ runs of a moved row

#: Cells as TradingView spells them, few enough that a cell often keeps its value.
_TOKENS = ["25.0", "25", "70", "80.5", "-1", "-100", "0.3", "-0.6", "0.05", "null", "1e2",
           "-0.0", "0", "1.0"]


async def _through_the_row_cache(data: st.DataObject) -> None:
    keys = [Key(profile, symbol, tf) for profile in ("full", "summary")
            for symbol in (USDJPY, EURUSD) for tf in _TFS]
    columns = tuple(sorted((column(base, tf) for tf in _TFS for base in FULL.columns),
                           key=frame_order))
    req = request([USDJPY, EURUSD], columns)
    layout = layout_for(columns)
    # The fast path: replies through the scanner client's row cache (a moved row says which
    # runs moved, the composer skips the keys of the others). The straightforward one: every
    # reply parsed whole, every row new, every key's values picked and compared.
    fast, whole = collector(wall=lambda: 1.7e9), collector(wall=lambda: 1.7e9)
    conns = {col: attach(hub_of(col), *keys) for col in (fast, whole)}
    cache = RowCache()
    cells: dict[str, list[str]] = {}
    for _ in range(data.draw(st.integers(2, 6))):
        for symbol in (USDJPY, EURUSD):
            old = cells.get(symbol)
            made: list[str] = []
            for start, stop in layout.blocks:
                if old is None or data.draw(st.integers(0, 2)) == 0:
                    made += data.draw(st.lists(st.sampled_from(_TOKENS),
                                               min_size=stop - start, max_size=stop - start))
                else:
                    made += old[start:stop]
            cells[symbol] = made
        text = ",".join(f'{{"s":"{symbol}","d":[{",".join(cells[symbol])}]}}'
                        for symbol in data.draw(st.permutations([USDJPY, EURUSD])))
        body = b'{"totalCount":2,"data":[%s]}' % text.encode()
        parsed, anew = cache.parse(req, body), parse_body(req, body)
        assert not isinstance(parsed, ScanError) and not isinstance(anew, ScanError)
        frames = {}
        for col, (rows, missing) in ((fast, parsed), (whole, anew)):
            hub_of(col).apply(col.compose(keys, [ScanResult(req, rows, missing, None, 1, 0.0)]))
            frames[col] = conns[col].take()
        assert frames[fast] == frames[whole]  # byte for byte: the same updates, in order
    for key in keys:
        assert hub_of(fast).entries[key].data == hub_of(whole).entries[key].data
        assert fast.composer.sources[key] == whole.composer.sources[key]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_keys_of_runs_that_did_not_move_are_skipped_exactly(data: st.DataObject) -> None:
    """Random ticks through the row cache, whose moved rows say which runs of columns (one
    per timeframe) moved so the composer skips the keys of the others, and through whole
    parses with every key picked and compared: the same frames, data and inputs."""
    asyncio.run(_through_the_row_cache(data))
