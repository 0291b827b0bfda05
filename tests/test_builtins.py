"""The built-in ``full`` and ``summary`` profiles: exact keys, values, and registration."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartsig.domain.columns import FULL_COLUMNS
from quartsig.fanout.hub import diff
from quartsig.plugins.builtins import full, summary
from quartsig.plugins.loader import DEFAULT_PLUGINS, get_plugin_manager, load_profiles
from quartsig.testing import check_contract, rows_strategy

OSCILLATOR_KEYS = {
    "act.RSI", "act.STOCH.K", "act.CCI", "act.ADX", "act.AO", "act.Mom", "act.MACD",
    "act.Stoch.RSI", "act.W%R", "act.BBP", "act.UO",
}  # fmt: skip
AVERAGE_KEYS = {
    "act.EMA10", "act.SMA10", "act.EMA20", "act.SMA20", "act.EMA30", "act.SMA30", "act.EMA50",
    "act.SMA50", "act.EMA100", "act.SMA100", "act.EMA200", "act.SMA200", "act.Ichimoku",
    "act.VWMA", "act.HullMA",
}  # fmt: skip
COUNT_KEYS = {"osc.buy", "osc.sell", "osc.neutral", "ma.buy", "ma.sell", "ma.neutral"}
LABEL_KEYS = {"rec.all", "rec.ma", "rec.other"}


def test_full_keys_exactly() -> None:
    expected = set(FULL_COLUMNS) | LABEL_KEYS | OSCILLATOR_KEYS | AVERAGE_KEYS | COUNT_KEYS
    assert len(expected) == 91 + 3 + 11 + 15 + 6
    assert set(full.compute({})) == expected
    assert set(full.compute({c: 1.0 for c in FULL_COLUMNS})) == expected
    assert list(full.compute({})) == list(full.KEYS)


def test_full_on_an_empty_row_is_all_null_with_zero_counts() -> None:
    data = full.compute({})
    assert all(data[key] == 0 for key in COUNT_KEYS)
    assert all(value is None for key, value in data.items() if key not in COUNT_KEYS)


def test_full_on_a_real_looking_row() -> None:
    row = {
        "Recommend.All": 0.5454545,
        "Recommend.MA": 0.8666667,
        "Recommend.Other": 0.0909091,
        "RSI": 65.2,
        "RSI[1]": 63.0,
        "close": 100.0,
        "EMA10": 98.0,
        "SMA10": 101.0,
        "EMA20": 100.0,
        "Rec.VWMA": 1,
        "Rec.UO": -1,
        "Mom": 1.5,
        "Mom[1]": 0.5,
        "volume": 123456,
        "Pivot.M.Classic.R1": float("nan"),
    }
    data = full.compute(row)
    assert (data["rec.all"], data["rec.ma"], data["rec.other"]) == ("STRONG_BUY",) * 2 + (
        "NEUTRAL",
    )
    assert data["act.RSI"] == "NEUTRAL"
    assert data["act.Mom"] == "BUY"
    assert data["act.UO"] == "SELL"
    assert data["act.CCI"] is None
    assert (data["act.EMA10"], data["act.SMA10"], data["act.EMA20"]) == ("BUY", "SELL", "NEUTRAL")
    assert data["act.VWMA"] == "BUY"
    assert (data["osc.buy"], data["osc.sell"], data["osc.neutral"]) == (1, 1, 1)
    assert (data["ma.buy"], data["ma.sell"], data["ma.neutral"]) == (2, 1, 1)
    assert data["volume"] == 123456
    assert data["Pivot.M.Classic.R1"] is None


def test_full_returns_a_fresh_dict_each_time() -> None:
    first = full.compute({"RSI": 1.0})
    first["RSI"] = "changed"
    assert full.compute({})["RSI"] is None


def test_summary_keys_and_values() -> None:
    assert summary.compute({"Recommend.All": 0.3, "RSI": 50}) == {
        "Recommend.All": 0.3,
        "rec.all": "BUY",
    }
    assert summary.compute({}) == {"Recommend.All": None, "rec.all": None}
    assert summary.compute({"Recommend.All": "x"}) == {"Recommend.All": None, "rec.all": None}
    assert summary.compute({"Recommend.All": 1.5}) == {"Recommend.All": 1.5, "rec.all": None}


def test_builtins_register_like_any_plugin() -> None:
    pm = get_plugin_manager(entry_points=False)
    assert [impl.plugin_name for impl in pm.hook.register_profiles.get_hookimpls()] == list(
        DEFAULT_PLUGINS
    )
    profiles = load_profiles(pm)
    assert list(profiles) == ["full", "summary"]
    assert profiles["full"].columns == FULL_COLUMNS
    assert profiles["summary"].columns == ("Recommend.All",)
    assert profiles["full"].compute is full.compute


# Values as a scanner (or a broken one) may send them; mostly near the rules' thresholds so
# that every branch of every rule is taken, and the rest anything at all.
_near = st.sampled_from([-100.0, -80.0, -50.0, -20.0, -1.0, 0.0, 1.0, 20.0, 30.0, 70.0, 80.0])
_value = st.one_of(
    st.none(),
    _near,
    _near.map(lambda x: x + 0.5),
    st.sampled_from([-1, 0, 1, 2, -1.0, 1.0, 0.1, -0.1, 0.5, -0.5]),
    st.floats(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=3),
)


@settings(max_examples=400)
@given(st.lists(_value, min_size=len(FULL_COLUMNS), max_size=len(FULL_COLUMNS)))
def test_full_compute_values_is_compute_on_any_row(values) -> None:
    """The generated kernel and the readable ``compute`` agree, key order included."""
    by_name = full.compute(dict(zip(FULL_COLUMNS, values, strict=True)))
    by_position = full.compute_values(tuple(values))
    assert list(by_position.items()) == list(by_name.items())
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in by_position.values())


@settings(max_examples=400)
@given(st.lists(_value, min_size=len(FULL_COLUMNS), max_size=len(FULL_COLUMNS)),
       st.lists(st.one_of(st.none(), _value), min_size=len(FULL_COLUMNS),
                max_size=len(FULL_COLUMNS)))
def test_full_compute_changes_is_compute_then_the_hubs_diff(before, moves) -> None:
    """From one row to the next (``moves``: None keeps a value, anything else replaces it):
    the changes are exactly the hub's diff of the two whole computes, key order and value
    objects included, and the data equals the second compute, updated in place."""
    after = tuple(old if move is None else move for old, move in zip(before, moves,
                                                                     strict=True))
    previous, expected = full.compute_values(tuple(before)), full.compute_values(after)
    expected_changes = diff(previous, expected)
    data, changes = full.compute_changes(after, previous)
    assert list(changes.items()) == list(expected_changes.items())
    assert all(changes[name] is expected[name] or expected[name] is None
               or type(expected[name]) is not float for name in changes)
    assert data is previous  # updated in place: no copy of 126 values
    assert list(data) == list(expected) and all(data[k] == expected[k] for k in expected)


def test_full_compute_values_on_a_real_looking_row_and_an_empty_one() -> None:
    row = dict.fromkeys(FULL_COLUMNS, 1.5) | {"RSI": 25.0, "RSI[1]": 20.0, "close": 2.0}
    assert full.compute_values(tuple(row.values())) == full.compute(row)
    assert full.compute_values((None,) * len(FULL_COLUMNS)) == full.compute({})
    assert full.compute_values((None,) * len(FULL_COLUMNS))["act.RSI"] is None


@given(_value)
def test_summary_compute_values_is_compute(value) -> None:
    assert summary.compute_values((value,)) == summary.compute({"Recommend.All": value})


@pytest.mark.parametrize("profile", [full.PROFILE, summary.PROFILE], ids=["full", "summary"])
def test_builtins_keep_the_contract_their_checked_flag_claims(profile: Any) -> None:
    """``checked=True`` lets the collector skip the per-value check every tick; this is why."""
    assert profile.checked
    check_contract(profile)

    @settings(max_examples=150, deadline=None, database=None)
    @given(rows_strategy(profile))
    def on_arbitrary_rows(row: dict[str, Any]) -> None:
        check_contract(profile, [row])

    on_arbitrary_rows()
