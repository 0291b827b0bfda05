"""The planner: every needed cell once, in no more requests than the seed's grouping."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartsig.columns import FULL_COLUMNS
from quartsig.model import Key, ScanRequest
from quartsig.planner import (
    Limits,
    needed_cells,
    overfetch,
    plan,
    seed_grouping,
)
from quartsig.symbols import screener_for
from quartsig.timeframes import TIMEFRAMES, column

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
            tuple(sorted(column(base, tf) for base in FULL_COLUMNS for tf in ("1m", "5m"))),
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


def test_a_dear_overfetch_does_not() -> None:
    # Merging would fetch 4 x 91 cells nobody watches: more than one request is worth.
    demand = keys("full", ["FX_IDC:EURUSD", "FX_IDC:GBPUSD"], ["1h"]) + keys(
        "full", ["FX_IDC:USDJPY", "FX_IDC:AUDUSD"], ["4h"]
    )
    assert len(plan(demand, PROFILES, screener_for)) == 2


def test_request_cost_zero_is_the_seed_grouping() -> None:
    demand = [Key("full", "FX_IDC:EURUSD", "1h"), Key("summary", "FX_IDC:USDJPY", "1h")]
    assert plan(demand, PROFILES, screener_for, Limits(request_cost=0)) == seed_grouping(
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
    assert [len(r.columns) for r in requests] == [100] * 9 + [10]
    fetched = [c for r in requests for c in r.columns]
    assert len(fetched) == len(set(fetched)) == 910


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
    "changes", [{"max_tickers": 0}, {"max_columns": 0}, {"max_cells": -1}, {"request_cost": -1}]
)
def test_limits_refuse_nonsense(changes: dict[str, int]) -> None:
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
    ),
)


@st.composite
def demands(draw: st.DrawFn) -> tuple[dict[str, tuple[str, ...]], list[Key]]:
    profiles = draw(profiles_strategy)
    symbols = draw(symbols_strategy)
    key = st.builds(
        Key, st.sampled_from(sorted(profiles)), st.sampled_from(symbols),
        st.sampled_from(TIMEFRAMES),
    )  # fmt: skip
    return profiles, draw(st.lists(key, max_size=60, unique=True))


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


@given(demands(), limits_strategy)
@settings(max_examples=300, deadline=None)
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
        assert list(request.columns) == sorted(request.columns)

    if all(within(request, limits) for request in seed):
        assert len(requests) <= len(seed)
        # Each request saved is worth at most request_cost unneeded cells.
        wasted = sum(fetched.values()) - sum(map(len, needed.values()))
        assert wasted <= (len(seed) - len(requests)) * limits.request_cost
    else:
        assert len(requests) <= split_seed_size(seed, limits)

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
