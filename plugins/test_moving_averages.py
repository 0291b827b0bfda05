"""The shipped ``ma`` profile, loaded through the plugin manager exactly as the server loads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings

from quartsig.domain.columns import MOVING_AVERAGES
from quartsig.plugins.loader import get_plugin_manager, load_profiles
from quartsig.plugins.profiles import Profile
from quartsig.testing import check_contract, live_server, rows_strategy

HERE = Path(__file__).parent

ACTION_KEYS = {
    f"act.{name}"
    for name in (
        "EMA10", "SMA10", "EMA20", "SMA20", "EMA30", "SMA30", "EMA50", "SMA50",
        "EMA100", "SMA100", "EMA200", "SMA200", "Ichimoku", "VWMA", "HullMA",
    )
}  # fmt: skip


@pytest.fixture
def ma() -> Profile:
    return load_profiles(get_plugin_manager(HERE, entry_points=False))["ma"]


def test_columns_are_the_moving_averages_close_and_their_rating(ma: Profile) -> None:
    assert set(ma.columns) == {*MOVING_AVERAGES, "close", "Recommend.MA"}


def test_keys(ma: Profile) -> None:
    expected = set(ma.columns) | ACTION_KEYS | {"rec.ma", "ma.buy", "ma.sell", "ma.neutral"}
    assert set(ma.compute({})) == expected


def test_actions_counts_and_label(ma: Profile) -> None:
    row = {
        "close": 100.0,
        "EMA10": 99.0,
        "SMA10": 99.5,
        "EMA20": 101.0,
        "SMA200": 100.0,
        "Rec.Ichimoku": -1,
        "Rec.HullMA9": 1,
        "Recommend.MA": -0.6,
        "EMA30": float("nan"),
    }
    data = ma.compute(row)
    assert (data["act.EMA10"], data["act.SMA10"], data["act.EMA20"]) == ("BUY", "BUY", "SELL")
    assert (data["act.SMA200"], data["act.Ichimoku"], data["act.HullMA"]) == (
        "NEUTRAL",
        "SELL",
        "BUY",
    )
    assert data["act.EMA30"] is None
    assert data["EMA30"] is None
    assert data["act.VWMA"] is None
    assert (data["ma.buy"], data["ma.sell"], data["ma.neutral"]) == (3, 2, 1)
    assert data["rec.ma"] == "STRONG_SELL"


def test_null_close_nulls_every_average_action_but_not_the_votes(ma: Profile) -> None:
    data = ma.compute({"EMA10": 1.0, "SMA10": 2.0, "Rec.VWMA": 0, "close": None})
    assert data["act.EMA10"] is None
    assert data["act.SMA10"] is None
    assert data["act.VWMA"] == "NEUTRAL"
    assert (data["ma.buy"], data["ma.sell"], data["ma.neutral"]) == (0, 0, 1)


def test_junk_does_not_raise(ma: Profile) -> None:
    data = ma.compute({name: "junk" for name in ma.columns})
    assert all(data[name] is None for name in ma.columns)


# --- the author's kit (quartsig.testing): the contract, over odd and arbitrary rows, and live --

MA = load_profiles(get_plugin_manager(HERE, entry_points=False))["ma"]


def test_contract_on_odd_rows() -> None:
    check_contract(MA)


@settings(max_examples=150, deadline=None)
@given(row=rows_strategy(MA))
def test_contract_on_any_row(row: dict) -> None:
    check_contract(MA, [row])


async def test_live_server_serves_the_profile(tmp_path: Path) -> None:
    async with live_server(HERE, data_dir=tmp_path) as server, server.connect() as client:
        snapshot = await client.subscribe("EURUSD", "1h", "ma")
        assert snapshot["type"] == "snapshot", snapshot
        close = server.standin.values("FX_IDC:EURUSD", "1h")["close"]
        assert snapshot["data"]["close"] == close
        assert snapshot["data"]["rec.ma"] in {"STRONG_SELL", "SELL", "NEUTRAL", "BUY", "STRONG_BUY"}
