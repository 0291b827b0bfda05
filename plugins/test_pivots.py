"""The shipped ``pivots`` profile, loaded through the plugin manager as the server loads it."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings

from quartsig.domain.columns import PIVOTS
from quartsig.plugins.loader import get_plugin_manager, load_profiles
from quartsig.plugins.profiles import Profile
from quartsig.testing import check_contract, rows_strategy

HERE = Path(__file__).parent
BANDS = {"band.Classic", "band.Fibonacci", "band.Camarilla", "band.Woodie", "band.Demark"}
LEVELS = ("S3", "S2", "S1", "Middle", "R1", "R2", "R3")


@pytest.fixture
def plugin() -> ModuleType:
    pm = get_plugin_manager(HERE, entry_points=False)
    return pm.get_plugin(str(HERE / "pivots.py"))


@pytest.fixture
def pivots() -> Profile:
    return load_profiles(get_plugin_manager(HERE, entry_points=False))["pivots"]


def _classic(close: Any, levels: tuple[float | None, ...] = (1, 2, 3, 4, 5, 6, 7)) -> dict:
    row: dict[str, Any] = {"close": close}
    row.update(
        {f"Pivot.M.Classic.{name}": value for name, value in zip(LEVELS, levels, strict=True)}
    )
    return row


def test_columns_and_keys(pivots: Profile) -> None:
    assert set(pivots.columns) == {*PIVOTS, "close"}
    assert set(pivots.compute({})) == {*PIVOTS, "close", *BANDS}
    assert all(value is None for value in pivots.compute({}).values())


@pytest.mark.parametrize(
    ("close", "band"),
    [
        (0.5, "<S3"),
        (1, "S3..S2"),
        (1.5, "S3..S2"),
        (3.99, "S1..Middle"),
        (4, "Middle..R1"),
        (6.5, "R2..R3"),
        (7, ">=R3"),
        (100, ">=R3"),
    ],
)
def test_band_of_the_close(pivots: Profile, close: float, band: str) -> None:
    data = pivots.compute(_classic(close))
    assert data["band.Classic"] == band
    assert data["close"] == close
    assert data["band.Fibonacci"] is None  # its levels are null


def test_demark_has_three_levels(pivots: Profile) -> None:
    row = {
        "close": 10,
        "Pivot.M.Demark.S1": 9,
        "Pivot.M.Demark.Middle": 11,
        "Pivot.M.Demark.R1": 12,
    }
    assert pivots.compute(row)["band.Demark"] == "S1..Middle"


@pytest.mark.parametrize(
    "row",
    [
        _classic(None),
        _classic("junk"),
        _classic(float("nan")),
        _classic(3.0, (1, 2, None, 4, 5, 6, 7)),
        _classic(3.0, (1, 2, 3, 2, 5, 6, 7)),  # crossed levels: no honest answer
    ],
)
def test_band_is_null_when_it_cannot_be_trusted(pivots: Profile, row: dict) -> None:
    assert pivots.compute(row)["band.Classic"] is None


def test_equal_levels_use_the_upper_band(plugin: ModuleType) -> None:
    ladder = [("S1", 1.0), ("Middle", 2.0), ("R1", 2.0), ("R2", 3.0)]
    assert plugin.band(2.0, ladder) == "R1..R2"
    assert plugin.band(1.0, []) is None


# --- the author's kit (quartsig.testing) --------------------------------------------------------

PIVOTS_PROFILE = load_profiles(get_plugin_manager(HERE, entry_points=False))["pivots"]


def test_contract_on_odd_rows() -> None:
    check_contract(PIVOTS_PROFILE)


@settings(max_examples=150, deadline=None)
@given(row=rows_strategy(PIVOTS_PROFILE))
def test_contract_on_any_row(row: dict) -> None:
    check_contract(PIVOTS_PROFILE, [row])
