"""Labels, actions and counts against the rules in shared/recommendation-rules.md."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartsig.domain.columns import FULL_COLUMNS
from quartsig.domain.rules import (
    MOVING_AVERAGES,
    OSCILLATORS,
    Counts,
    Rule,
    count,
    decide_all,
    inputs,
    label,
    number,
    numbers,
)
from quartsig.plugins.builtins import full

NAN = float("nan")
INF = float("inf")


# --- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, 1.5),
        (-0.0, 0.0),
        (3, 3),
        (Fraction(1, 2), 0.5),
        (None, None),
        (NAN, None),
        (INF, None),
        (-INF, None),
        (True, None),
        (False, None),
        ("1.5", None),
        (b"1", None),
        ([1], None),
        ({"a": 1}, None),
        (Decimal("1.5"), None),  # not a numbers.Real: the scanner never sends one
        (2**63, None),  # orjson cannot encode it
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
    ],
)
def test_number(value: object, expected: float | None) -> None:
    assert number(value) == expected
    if expected is not None:
        assert type(number(value)) in (int, float)


def test_number_turns_subclasses_into_plain_floats() -> None:
    class Volume(int):
        pass

    result = number(Volume(7))
    assert result == 7
    assert type(result) is float


def test_numbers_treats_a_missing_key_as_null_and_ignores_extra_keys() -> None:
    assert numbers({"RSI": 55.0, "junk": 1, "CCI20": "x"}, ("RSI", "CCI20", "ADX")) == {
        "RSI": 55.0,
        "CCI20": None,
        "ADX": None,
    }


def test_numbers_fills_the_given_dict() -> None:
    into: dict[str, Any] = {"RSI": "placeholder", "extra": 1}
    assert numbers({"RSI": 12.0}, ("RSI",), into=into) is into
    assert into == {"RSI": 12.0, "extra": 1}


# --- labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-1, "STRONG_SELL"),
        (-1.0, "STRONG_SELL"),
        (-0.75, "STRONG_SELL"),
        (-0.5000001, "STRONG_SELL"),
        (-0.5, "SELL"),
        (-0.3, "SELL"),
        (-0.1000001, "SELL"),
        (-0.1, "NEUTRAL"),
        (0, "NEUTRAL"),
        (0.1, "NEUTRAL"),
        (0.1000001, "BUY"),
        (0.3, "BUY"),
        (0.5, "BUY"),
        (0.5000001, "STRONG_BUY"),
        (1, "STRONG_BUY"),
        (1.0, "STRONG_BUY"),
        (-1.0000001, None),
        (1.0000001, None),
        (-2, None),
        (2, None),
        (NAN, None),
        (INF, None),
        (-INF, None),
        (None, None),
        (True, None),
        (False, None),
        ("0.3", None),
        ([0.3], None),
    ],
)
def test_label(value: object, expected: str | None) -> None:
    assert label(value) == expected


# --- actions -----------------------------------------------------------------------------

# name -> (a row that buys, a row that sells, a row that is neutral)
ACTION_CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "RSI": (
        {"RSI": 25, "RSI[1]": 20},
        {"RSI": 75, "RSI[1]": 80},
        {"RSI": 25, "RSI[1]": 30},
    ),
    "STOCH.K": (
        {"Stoch.K": 15, "Stoch.D": 10, "Stoch.K[1]": 5, "Stoch.D[1]": 8},
        {"Stoch.K": 85, "Stoch.D": 90, "Stoch.K[1]": 95, "Stoch.D[1]": 92},
        {"Stoch.K": 50, "Stoch.D": 40, "Stoch.K[1]": 30, "Stoch.D[1]": 35},
    ),
    "CCI": (
        {"CCI20": -150, "CCI20[1]": -200},
        {"CCI20": 150, "CCI20[1]": 200},
        {"CCI20": -150, "CCI20[1]": -100},
    ),
    "ADX": (
        {"ADX": 25, "ADX+DI": 30, "ADX-DI": 20, "ADX+DI[1]": 18, "ADX-DI[1]": 22},
        {"ADX": 25, "ADX+DI": 20, "ADX-DI": 30, "ADX+DI[1]": 22, "ADX-DI[1]": 18},
        {"ADX": 15, "ADX+DI": 30, "ADX-DI": 20, "ADX+DI[1]": 18, "ADX-DI[1]": 22},
    ),
    "AO": (
        {"AO": 1, "AO[1]": -1, "AO[2]": 0},
        {"AO": -1, "AO[1]": 1, "AO[2]": 0},
        {"AO": 1, "AO[1]": 2, "AO[2]": 3},
    ),
    "Mom": ({"Mom": 2, "Mom[1]": 1}, {"Mom": 1, "Mom[1]": 2}, {"Mom": 1, "Mom[1]": 1}),
    "MACD": (
        {"MACD.macd": 0.2, "MACD.signal": 0.1},
        {"MACD.macd": 0.1, "MACD.signal": 0.2},
        {"MACD.macd": 0.1, "MACD.signal": 0.1},
    ),
    "Stoch.RSI": ({"Rec.Stoch.RSI": 1}, {"Rec.Stoch.RSI": -1}, {"Rec.Stoch.RSI": 0}),
    "W%R": ({"Rec.WR": 1.0}, {"Rec.WR": -1.0}, {"Rec.WR": 0.5}),
    "BBP": ({"Rec.BBPower": 1}, {"Rec.BBPower": -1}, {"Rec.BBPower": 2}),
    "UO": ({"Rec.UO": 1}, {"Rec.UO": -1}, {"Rec.UO": 0}),
    **{
        name: ({name: 9, "close": 10}, {name: 11, "close": 10}, {name: 10, "close": 10})
        for kind in ("EMA", "SMA")
        for name in (f"{kind}{length}" for length in (10, 20, 30, 50, 100, 200))
    },
    "Ichimoku": ({"Rec.Ichimoku": 1}, {"Rec.Ichimoku": -1}, {"Rec.Ichimoku": 0}),
    "VWMA": ({"Rec.VWMA": 1}, {"Rec.VWMA": -1}, {"Rec.VWMA": 0}),
    "HullMA": ({"Rec.HullMA9": 1}, {"Rec.HullMA9": -1}, {"Rec.HullMA9": 0}),
}

ALL_RULES: dict[str, Rule] = {**OSCILLATORS, **MOVING_AVERAGES}


def test_rule_tables_are_the_documented_names() -> None:
    assert list(OSCILLATORS) == [
        "RSI", "STOCH.K", "CCI", "ADX", "AO", "Mom", "MACD", "Stoch.RSI", "W%R", "BBP", "UO",
    ]  # fmt: skip
    assert list(MOVING_AVERAGES) == [
        "EMA10", "SMA10", "EMA20", "SMA20", "EMA30", "SMA30", "EMA50", "SMA50",
        "EMA100", "SMA100", "EMA200", "SMA200", "Ichimoku", "VWMA", "HullMA",
    ]  # fmt: skip
    assert set(ACTION_CASES) == set(ALL_RULES)


def test_rules_read_only_catalogue_columns() -> None:
    assert set(inputs(ALL_RULES)) <= set(FULL_COLUMNS)


@pytest.mark.parametrize("name", ACTION_CASES)
def test_action_both_ways_and_neutral(name: str) -> None:
    buying, selling, neutral = ACTION_CASES[name]
    rule = ALL_RULES[name]
    assert rule(buying) == "BUY"
    assert rule(selling) == "SELL"
    assert rule(neutral) == "NEUTRAL"


@pytest.mark.parametrize("name", ACTION_CASES)
def test_action_is_null_when_any_input_is_null_or_bad(name: str) -> None:
    rule = ALL_RULES[name]
    buying = ACTION_CASES[name][0]
    for column in rule.inputs:
        for bad in (None, NAN, INF, "12", True):
            assert rule({**buying, column: bad}) is None, (column, bad)
        missing = {key: value for key, value in buying.items() if key != column}
        assert rule(missing) is None, column


def test_ao_second_clause() -> None:
    # Rising above zero with a trough at AO[1] (AO[2] > AO[1]) buys; the mirror sells.
    assert OSCILLATORS["AO"]({"AO": 3, "AO[1]": 2, "AO[2]": 2.5}) == "BUY"
    assert OSCILLATORS["AO"]({"AO": -3, "AO[1]": -2, "AO[2]": -2.5}) == "SELL"
    assert OSCILLATORS["AO"]({"AO": 3, "AO[1]": 2, "AO[2]": 1}) == "NEUTRAL"


def test_a_null_moving_average_does_not_shift_the_others() -> None:
    # tradingview-ta pairs averages with verdicts by position; one null shifted every later one.
    row = {"close": 10, "EMA10": None, "SMA10": 11, "EMA20": 9}
    assert MOVING_AVERAGES["EMA10"](row) is None
    assert MOVING_AVERAGES["SMA10"](row) == "SELL"
    assert MOVING_AVERAGES["EMA20"](row) == "BUY"


def test_apply_matches_call_on_clean_rows() -> None:
    for name, cases in ACTION_CASES.items():
        rule = ALL_RULES[name]
        for case in cases:
            clean = numbers(case, rule.inputs)
            assert rule.apply(clean) == rule(case)
    assert decide_all(ALL_RULES.values(), numbers({}, inputs(ALL_RULES))) == [None] * 26


def test_rule_needs_inputs() -> None:
    with pytest.raises(ValueError, match="at least one input"):
        Rule((), lambda: "BUY")


def test_count_leaves_nulls_out() -> None:
    assert count(["BUY", None, "SELL", "BUY", "NEUTRAL", None]) == Counts(2, 1, 1)
    assert count(iter(["SELL"])) == Counts(0, 1, 0)
    assert count([]) == Counts(0, 0, 0)


# --- property: the full profile agrees with a straightforward reading of the rules -----


def _expected_label(v: Any) -> str | None:
    if v is None:
        return None
    if -1 <= v < -0.5:
        return "STRONG_SELL"
    if -0.5 <= v < -0.1:
        return "SELL"
    if -0.1 <= v <= 0.1:
        return "NEUTRAL"
    if 0.1 < v <= 0.5:
        return "BUY"
    if 0.5 < v <= 1:
        return "STRONG_BUY"
    return None


def _verdict(buy: bool, sell: bool) -> str:
    return "BUY" if buy else "SELL" if sell else "NEUTRAL"


def _expected_actions(r: dict[str, Any]) -> dict[str, str | None]:
    """The rules document, transcribed literally, one indicator at a time."""

    def need(*names: str) -> bool:
        return all(r.get(n) is not None for n in names)

    def rec(name: str) -> str | None:
        if not need(name):
            return None
        return _verdict(r[name] == 1, r[name] == -1)

    out: dict[str, str | None] = {}
    out["RSI"] = (
        _verdict(r["RSI"] < 30 and r["RSI[1]"] < r["RSI"], r["RSI"] > 70 and r["RSI[1]"] > r["RSI"])
        if need("RSI", "RSI[1]")
        else None
    )
    k, d, k1, d1 = (r.get(n) for n in ("Stoch.K", "Stoch.D", "Stoch.K[1]", "Stoch.D[1]"))
    out["STOCH.K"] = (
        _verdict(
            k < 20 and d < 20 and k > d and k1 < d1,
            k > 80 and d > 80 and k < d and k1 > d1,
        )
        if need("Stoch.K", "Stoch.D", "Stoch.K[1]", "Stoch.D[1]")
        else None
    )
    c, c1 = r.get("CCI20"), r.get("CCI20[1]")
    out["CCI"] = (
        _verdict(c < -100 and c > c1, c > 100 and c < c1) if need("CCI20", "CCI20[1]") else None
    )
    adx, p, m, p1, m1 = (r.get(n) for n in ("ADX", "ADX+DI", "ADX-DI", "ADX+DI[1]", "ADX-DI[1]"))
    out["ADX"] = (
        _verdict(adx > 20 and p1 < m1 and p > m, adx > 20 and p1 > m1 and p < m)
        if need("ADX", "ADX+DI", "ADX-DI", "ADX+DI[1]", "ADX-DI[1]")
        else None
    )
    a, a1, a2 = r.get("AO"), r.get("AO[1]"), r.get("AO[2]")
    out["AO"] = (
        _verdict(
            (a > 0 and a1 < 0) or (a > 0 and a1 > 0 and a > a1 and a2 > a1),
            (a < 0 and a1 > 0) or (a < 0 and a1 < 0 and a < a1 and a2 < a1),
        )
        if need("AO", "AO[1]", "AO[2]")
        else None
    )
    out["Mom"] = (
        _verdict(r["Mom"] > r["Mom[1]"], r["Mom"] < r["Mom[1]"]) if need("Mom", "Mom[1]") else None
    )
    out["MACD"] = (
        _verdict(r["MACD.macd"] > r["MACD.signal"], r["MACD.macd"] < r["MACD.signal"])
        if need("MACD.macd", "MACD.signal")
        else None
    )
    out["Stoch.RSI"] = rec("Rec.Stoch.RSI")
    out["W%R"] = rec("Rec.WR")
    out["BBP"] = rec("Rec.BBPower")
    out["UO"] = rec("Rec.UO")
    for length in (10, 20, 30, 50, 100, 200):
        for kind in ("EMA", "SMA"):
            name = f"{kind}{length}"
            out[name] = (
                _verdict(r[name] < r["close"], r[name] > r["close"])
                if need(name, "close")
                else None
            )
    out["Ichimoku"] = rec("Rec.Ichimoku")
    out["VWMA"] = rec("Rec.VWMA")
    out["HullMA"] = rec("Rec.HullMA9")
    return out


# Values clustered on the thresholds the rules use, so both sides and equality all occur.
_INDICATOR = st.one_of(
    st.none(),
    st.sampled_from([-150, -100, -20, -1, 0, 1, 10, 19, 20, 21, 29, 30, 70, 71, 80, 81, 100, 150]),
    st.floats(min_value=-200, max_value=200, allow_nan=False),
)
_REC = st.sampled_from([None, -1, 0, 1, -1.0, 1.0, 0.5])
_RATING = st.one_of(
    st.none(),
    st.sampled_from([-1, -0.5, -0.1, 0, 0.1, 0.5, 1, -1.5, 1.5]),
    st.floats(min_value=-1.2, max_value=1.2, allow_nan=False),
)


def _column_strategy(name: str) -> st.SearchStrategy[Any]:
    if name.startswith("Rec."):
        return _REC
    if name.startswith("Recommend."):
        return _RATING
    return _INDICATOR


_ROWS = st.fixed_dictionaries({}, optional={n: _column_strategy(n) for n in FULL_COLUMNS})


@settings(max_examples=400, deadline=None)
@given(_ROWS)
def test_full_agrees_with_a_literal_reading_of_the_rules(row: dict[str, Any]) -> None:
    data = full.compute(row)
    assert data["rec.all"] == _expected_label(row.get("Recommend.All"))
    assert data["rec.ma"] == _expected_label(row.get("Recommend.MA"))
    assert data["rec.other"] == _expected_label(row.get("Recommend.Other"))
    expected = _expected_actions(row)
    for name, action in expected.items():
        assert data[f"act.{name}"] == action, name
    oscillators = [expected[name] for name in OSCILLATORS]
    averages = [expected[name] for name in MOVING_AVERAGES]
    for prefix, actions in (("osc", oscillators), ("ma", averages)):
        assert data[f"{prefix}.buy"] == sum(a == "BUY" for a in actions)
        assert data[f"{prefix}.sell"] == sum(a == "SELL" for a in actions)
        assert data[f"{prefix}.neutral"] == sum(a == "NEUTRAL" for a in actions)
    for column in FULL_COLUMNS:
        assert data[column] == row.get(column)


_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.sampled_from([-1, 0, 1, 0.1, -0.1, 0.5, -0.5, 30, 70, 100, -100]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from((*FULL_COLUMNS, "junk", "")), _JSONISH))
def test_full_never_raises_and_stays_json(row: dict[str, Any]) -> None:
    data = full.compute(row)
    json.dumps(data, allow_nan=False)  # raises on NaN/inf
    for column in FULL_COLUMNS:
        value = data[column]
        assert value is None or (type(value) in (int, float) and math.isfinite(value))
        if type(value) is int:  # orjson encodes 64-bit integers only
            assert -(2**63) <= value < 2**63
    for name in ALL_RULES:
        assert data[f"act.{name}"] in (None, "BUY", "SELL", "NEUTRAL")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _JSONISH), st.sampled_from(sorted(ALL_RULES)))
def test_each_rule_never_raises(row: dict[str, Any], name: str) -> None:
    assert ALL_RULES[name](row) in (None, "BUY", "SELL", "NEUTRAL")
