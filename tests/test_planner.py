"""The planner: every needed cell once, in no more requests than the seed's grouping, within
the over-fetch cap."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartsig.domain.columns import FULL_COLUMNS
from quartsig.domain.model import Key, ScanRequest
from quartsig.domain.symbols import screener_for
from quartsig.domain.timeframes import TIMEFRAMES, column, frame_order
from quartsig.upstream.planner import Limits, needed_cells, overfetch, plan, seed_grouping

PROFILES: dict[str, tuple[str, ...]] = {"full": FULL_COLUMNS, "summary": ("Recommend.All",)}


def keys(profile: str, symbols: Sequence[str], tfs: Sequence[str]) -> list[Key]:
    return [Key(profile, symbol, tf) for symbol in symbols for tf in tfs]


# -- examples ---------------------------------------------------------------------------------


def test_the_seed_example_is_one_request() -> None:
    demand = keys("full", ["FX_IDC:USDJPY", "FX_IDC:NZDUSD", "FX_IDC:USDCHF"], ["1m", "5m"])
    expected = [
        ScanRequest(
            "forex",
            ("FX_IDC:NZDUSD", "FX_IDC:USDCHF", "FX_IDC:USDJPY"),
            tuple(sorted((column(base, tf) for base in FULL_COLUMNS for tf in ("1m", "5m")),
                         key=frame_order)),
        )
    ]
    assert seed_grouping(demand, PROFILES, screener_for) == expected
    assert plan(demand, PROFILES, screener_for) == expected


def test_screeners_never_share_a_request() -> None:
    demand = keys("summary", ["FX_IDC:EURUSD", "BINANCE:BTCUSDT", "NASDAQ:AAPL"], ["1h"])
    requests = plan(demand, PROFILES, screener_for, Limits(request_cost=10**9))
    assert [(r.screener, r.tickers) for r in requests] == [
        ("america", ("NASDAQ:AAPL",)),
        ("crypto", ("BINANCE:BTCUSDT",)),
        ("forex", ("FX_IDC:EURUSD",)),
    ]


def test_exchanges_of_one_screener_do_share() -> None:
    demand = keys("summary", ["FX_IDC:EURUSD", "OANDA:EURUSD"], ["1h"])
    assert plan(demand, PROFILES, screener_for) == [
        ScanRequest("forex", ("FX_IDC:EURUSD", "OANDA:EURUSD"), ("Recommend.All|60",))
    ]


def test_a_cheap_overfetch_saves_a_request() -> None:
    # USDJPY's summary column is inside EURUSD's full set: 90 cells extra buy one request less.
    demand = [Key("full", "FX_IDC:EURUSD", "1h"), Key("summary", "FX_IDC:USDJPY", "1h")]
    assert len(seed_grouping(demand, PROFILES, screener_for)) == 2
    [request] = plan(demand, PROFILES, screener_for)
    assert request.cells == 2 * 91
    assert plan(demand, PROFILES, screener_for, Limits(request_cost=89)) == seed_grouping(
        demand, PROFILES, screener_for
    )


def test_the_overfetch_cap_refuses_merges_request_cost_would_take() -> None:
    # Thirty tickers on three frames each: requests worth a million cells would buy one
    # request at 3.6 times the cells, but the cap stops the merges at 1.25.
    demand = [
        Key("full", f"FX_IDC:T{i:02d}", TIMEFRAMES[j])
        for i in range(30)
        for j in {i % 10, (i * 3 + 1) % 10, (i * 7 + 2) % 10}
    ]
    needed = needed_cells(demand, PROFILES)
    dear = plan(demand, PROFILES, screener_for, Limits(request_cost=10**6, max_overfetch=5.0))
    assert len(dear) == 1
    assert overfetch(dear, needed) > 3.5
    capped = plan(demand, PROFILES, screener_for, Limits(request_cost=10**6))
    assert 1 < len(capped) < len(seed_grouping(demand, PROFILES, screener_for))
    assert 1.2 < overfetch(capped, needed) <= 1.25


def test_a_small_demand_may_waste_the_slack_whatever_the_ratio() -> None:
    # 92 cells needed, 184 fetched in one request: 2.0, inside the 300 cells of slack.
    demand = [Key("full", "FX_IDC:EURUSD", "1h"), Key("summary", "FX_IDC:USDJPY", "4h")]
    [request] = plan(demand, PROFILES, screener_for)
    assert request.cells == 184
    exact = Limits(overfetch_slack=91)
    assert plan(demand, PROFILES, screener_for, exact) == seed_grouping(
        demand, PROFILES, screener_for
    )


def test_many_distinct_needs_over_few_timeframes_are_planned_by_columns() -> None:
    # Two tickers on each pair of four frames: six distinct needs, six seed requests, where one
    # request per frame covers every cell exactly, each ticker's row coming back in two pieces.
    frames = ("1h", "4h", "1d", "1W")
    pairs = [(a, b) for a in frames for b in frames if frames.index(a) < frames.index(b)]
    demand = [
        Key("full", f"FX_IDC:T{i}{j}", tf)
        for i, pair in enumerate(pairs)
        for j in range(2)
        for tf in pair
    ]
    assert len(seed_grouping(demand, PROFILES, screener_for)) == 6
    requests = plan(demand, PROFILES, screener_for)
    assert overfetch(requests, needed_cells(demand, PROFILES)) == 1.0
    by_frame = {r.columns[0].partition("|")[2]: r.tickers for r in requests}
    assert len(requests) == len(by_frame) == 4
    assert all(len(r.columns) == 91 and len(r.tickers) == 6 for r in requests)
    assert by_frame["240"] == tuple(
        f"FX_IDC:T{i}{j}" for i, pair in enumerate(pairs) if "4h" in pair for j in range(2)
    )


def test_pieces_of_a_column_group_cut_to_the_limits_do_not_merge() -> None:
    # By columns, A|240 is needed by three tickers, over max_tickers: cut into pieces, one of
    # which, merged with a narrower group, would fetch a cell its sibling fetches too.
    demand = [
        Key("p", "FX_IDC:S0", "1h"),
        Key("p", "FX_IDC:S5", "1d"),
        Key("p", "FX_IDC:S5", "4h"),
        Key("r", "FX_IDC:S0", "4h"),
        Key("r", "FX_IDC:S3", "4h"),
    ]
    profiles = {"p": ("A",), "r": ("A", "B", "C")}
    limits = Limits(max_tickers=2, max_cells=6, request_cost=17, max_overfetch=3.0)
    fetched = fetched_cells(plan(demand, profiles, screener_for, limits))
    assert set(fetched.values()) == {1}
    assert set(fetched) >= {(t, c) for t, cs in needed_cells(demand, profiles).items() for c in cs}


def test_a_dear_overfetch_does_not() -> None:
    # Merging would fetch 4 x 91 cells nobody watches: more than one request is worth.
    demand = keys("full", ["FX_IDC:EURUSD", "FX_IDC:GBPUSD"], ["1h"]) + keys(
        "full", ["FX_IDC:USDJPY", "FX_IDC:AUDUSD"], ["4h"]
    )
    assert len(plan(demand, PROFILES, screener_for)) == 2


def test_request_cost_zero_fetches_only_what_is_needed() -> None:
    demand = [Key("full", "FX_IDC:EURUSD", "1h"), Key("summary", "FX_IDC:USDJPY", "1h")]
    limits = Limits(request_cost=0, max_overfetch=10.0)
    assert plan(demand, PROFILES, screener_for, limits) == seed_grouping(
        demand, PROFILES, screener_for
    )


def test_both_profiles_on_one_key_fetch_recommend_all_once() -> None:
    demand = [Key("full", "FX_IDC:EURUSD", "5m"), Key("summary", "FX_IDC:EURUSD", "5m")]
    [request] = plan(demand, PROFILES, screener_for)
    assert request.columns.count("Recommend.All|5") == 1
    assert request.cells == 91


def test_too_many_tickers_are_split_evenly_by_the_limit() -> None:
    symbols = [f"BINANCE:C{i:04d}USDT" for i in range(2500)]
    requests = plan(keys("summary", symbols, ["1d"]), PROFILES, screener_for)
    assert [len(r.tickers) for r in requests] == [1000, 1000, 500]
    assert sorted(t for r in requests for t in r.tickers) == symbols


def test_a_ticker_wider_than_max_columns_is_split_by_columns() -> None:
    demand = keys("full", ["FX_IDC:EURUSD"], TIMEFRAMES)
    requests = plan(demand, PROFILES, screener_for, Limits(max_columns=100))
    assert sorted((len(r.columns) for r in requests), reverse=True) == [100] * 9 + [10]
    fetched = [c for r in requests for c in r.columns]
    assert len(fetched) == len(set(fetched)) == 910


def test_a_timeframes_full_columns_come_in_the_profiles_order() -> None:
    """So a ``full`` key's run of a reply is its values as the kernel takes them: the row
    cache's tuple is handed over as it stands (``Layout.run_picker``), with no per-key pick."""
    demand = keys("full", ["FX_IDC:EURUSD"], ["1h", "5m"]) + keys("summary", ["FX_IDC:EURUSD"],
                                                                    ["1h"])
    [request] = plan(demand, PROFILES, screener_for)
    for tf in ("5m", "1h"):
        suffix = column("", tf)
        assert [c for c in request.columns if c.endswith(suffix) and "|" in c] == [
            column(base, tf) for base in FULL_COLUMNS]


def test_columns_of_no_profile_follow_the_full_ones_by_name() -> None:
    names = ["Zeta|60", "RSI|60", "ATR|60", "Recommend.All|60", "RSI", "ATR|5"]
    assert sorted(names, key=frame_order) == [
        "RSI", "ATR|5", "Recommend.All|60", "RSI|60", "ATR|60", "Zeta|60"]


def test_empty_demand_and_empty_profiles_need_no_request() -> None:
    assert plan([], PROFILES, screener_for) == []
    assert plan([Key("none", "FX_IDC:EURUSD", "1h")], {"none": ()}, screener_for) == []


def test_needed_cells_and_overfetch() -> None:
    demand = [Key("full", "FX_IDC:EURUSD", "1h"), Key("summary", "FX_IDC:USDJPY", "1h")]
    needed = needed_cells(demand, PROFILES)
    assert needed["FX_IDC:USDJPY"] == {"Recommend.All|60"}
    assert len(needed["FX_IDC:EURUSD"]) == 91
    assert overfetch(plan(demand, PROFILES, screener_for), needed) == pytest.approx(182 / 92)
    assert overfetch([], {}) == 1.0


@pytest.mark.parametrize(
    "changes",
    [
        {"max_tickers": 0},
        {"max_columns": 0},
        {"max_cells": -1},
        {"request_cost": -1},
        {"overfetch_slack": -1},
        {"max_overfetch": 0.99},
        {"max_overfetch": math.nan},
    ],
)
def test_limits_refuse_nonsense(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        Limits(**changes)


def test_default_limits_hold_one_ticker_of_the_full_profile_on_every_timeframe() -> None:
    limits = Limits()
    assert min(limits.max_columns, limits.max_cells) >= len(FULL_COLUMNS) * len(TIMEFRAMES)


# -- properties -------------------------------------------------------------------------------

EXCHANGES = ("FX_IDC", "OANDA", "BINANCE", "COINBASE", "NASDAQ", "TVC")
BASES = ("Recommend.All", "RSI", "RSI[1]", "MACD.macd", "close", "EMA20", "ADX", "AO")

profiles_strategy = st.dictionaries(
    st.sampled_from(("p", "q", "r")),
    st.lists(st.sampled_from(BASES), min_size=1, max_size=5, unique=True).map(tuple),
    min_size=1,
)
symbols_strategy = st.lists(
    st.builds("{}:{}".format, st.sampled_from(EXCHANGES), st.sampled_from("ABCDEFGH")),
    min_size=1,
    max_size=20,
    unique=True,
)
limits_strategy = st.one_of(
    st.just(Limits()),
    st.builds(
        Limits,
        max_tickers=st.integers(1, 8),
        max_columns=st.integers(1, 30),
        max_cells=st.integers(1, 120),
        request_cost=st.integers(0, 60),
        max_overfetch=st.one_of(st.just(1.0), st.floats(1.0, 3.0)),
        overfetch_slack=st.integers(0, 40),
    ),
)


@st.composite
def demands(
    draw: st.DrawFn,
    symbols_strategy: st.SearchStrategy[list[str]] = symbols_strategy,
    timeframes: Sequence[str] = TIMEFRAMES,
    min_keys: int = 0,
) -> tuple[dict[str, tuple[str, ...]], list[Key]]:
    profiles = draw(profiles_strategy)
    symbols = draw(symbols_strategy)
    key = st.builds(
        Key, st.sampled_from(sorted(profiles)), st.sampled_from(symbols),
        st.sampled_from(timeframes),
    )  # fmt: skip
    return profiles, draw(st.lists(key, min_size=min_keys, max_size=60, unique=True))


#: Also one screener's many tickers on a few timeframes: many distinct needs over few column
#: blocks, where a plan by columns wins and tickers come back in pieces.
crowded = st.lists(
    st.builds("FX_IDC:{}{}".format, st.sampled_from("ABCDEFGH"), st.sampled_from("ABCDEFGH")),
    min_size=10,
    max_size=30,
    unique=True,
)
any_demand = st.one_of(demands(), demands(crowded, TIMEFRAMES[3:6], min_keys=20))


def fetched_cells(requests: Sequence[ScanRequest]) -> Counter[tuple[str, str]]:
    return Counter((t, c) for r in requests for t in r.tickers for c in r.columns)


def within(request: ScanRequest, limits: Limits) -> bool:
    return (
        len(request.tickers) <= limits.max_tickers
        and len(request.columns) <= limits.max_columns
        and request.cells <= limits.max_cells
    )


def split_seed_size(seed: Sequence[ScanRequest], limits: Limits) -> int:
    """How many requests the seed's grouping becomes once cut to the limits (see plan())."""
    total = 0
    max_width = min(limits.max_columns, limits.max_cells)
    for request in seed:
        width = len(request.columns)
        pieces = [max_width] * (width // max_width) + [width % max_width] if width > max_width \
            else [width]  # fmt: skip
        for piece in filter(None, pieces):
            per = min(limits.max_tickers, limits.max_cells // piece)
            total += math.ceil(len(request.tickers) / per)
    return total


@given(any_demand, limits_strategy)
@settings(max_examples=400, deadline=None)
def test_plan_properties(
    drawn: tuple[Mapping[str, Sequence[str]], list[Key]], limits: Limits
) -> None:
    profiles, demand = drawn
    needed = needed_cells(demand, profiles)
    requests = plan(demand, profiles, screener_for, limits)
    seed = seed_grouping(demand, profiles, screener_for)
    fetched = fetched_cells(requests)

    # Coverage, and no cell twice in one tick.
    assert {(t, c) for t, columns in needed.items() for c in columns} <= set(fetched)
    assert set(fetched.values()) <= {1}

    for request in requests:
        assert request.tickers
        assert request.columns
        assert {screener_for(t) for t in request.tickers} == {request.screener}
        # Only needed, unless merged: every column is needed by some ticker of the request.
        assert set(request.columns) <= set().union(*(needed[t] for t in request.tickers))
        assert within(request, limits)
        assert list(request.tickers) == sorted(request.tickers)
        # Columns by timeframe, then in the full profile's order (not plainly sorted): each
        # key's columns are contiguous in a reply's rows, so the row cache tells which
        # timeframes of a moved row moved from their bytes.
        assert list(request.columns) == sorted(request.columns, key=frame_order)
        runs = [frame_order(name)[0] for name in request.columns]
        assert len(set(runs)) == len(
            [s for i, s in enumerate(runs) if i == 0 or runs[i - 1] != s])

    # Never over the cap: each screener's plan starts exact and refuses a merge that would
    # cross it.
    wanted = sum(map(len, needed.values()))
    wasted = sum(fetched.values()) - wanted
    for screener in {r.screener for r in requests}:
        own = sum(len(cs) for t, cs in needed.items() if screener_for(t) == screener)
        waste = sum(r.cells for r in requests if r.screener == screener) - own
        assert waste <= max((limits.max_overfetch - 1) * own, limits.overfetch_slack)
    if (limits.max_overfetch == 1.0 and limits.overfetch_slack == 0) or not limits.request_cost:
        assert wasted == 0

    # Each request saved is worth at most request_cost unneeded cells.
    bound = (
        len(seed)
        if all(within(request, limits) for request in seed)
        else split_seed_size(seed, limits)
    )
    assert len(requests) <= bound
    assert wasted <= (bound - len(requests)) * limits.request_cost

    # Deterministic, whatever order the demand arrives in.
    shuffled = list(demand)
    random.Random(len(demand)).shuffle(shuffled)
    assert plan(shuffled, profiles, screener_for, limits) == requests
    assert plan(iter(demand), profiles, screener_for, limits) == requests


@given(demands())
@settings(max_examples=200, deadline=None)
def test_seed_grouping_is_exact(drawn: tuple[Mapping[str, Sequence[str]], list[Key]]) -> None:
    profiles, demand = drawn
    needed = needed_cells(demand, profiles)
    seed = seed_grouping(demand, profiles, screener_for)
    assert fetched_cells(seed) == Counter((t, c) for t, cs in needed.items() for c in cs)
    # One request per (screener, distinct need): the seed's rule.
    assert len(seed) == len({(screener_for(t), frozenset(cs)) for t, cs in needed.items()})
    assert overfetch(seed, needed) == 1.0
