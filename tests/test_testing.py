"""The plugin author's kit (quartsig.testing) catches what the collector would refuse."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings

from quartsig.plugins.profiles import Profile
from quartsig.testing import check_contract, edge_rows, null_row, rows_strategy

COLUMNS = ("close", "RSI")


def _profile(compute: Any, **extra: Any) -> Profile:
    return Profile(name="p", description="test", columns=COLUMNS, compute=compute, **extra)


def _fine(row: Mapping[str, Any]) -> dict[str, Any]:
    close = row.get("close")
    ok = isinstance(close, int | float) and not isinstance(close, bool) and math.isfinite(close)
    return {"close": float(close) if ok else None}


def test_edge_rows_hold_nulls_nan_huge_values_and_junk() -> None:
    rows = list(edge_rows(_profile(_fine)))
    values = [value for row in rows for value in row.values()]
    assert null_row(_profile(_fine)) in rows and {} in rows
    assert any(isinstance(v, float) and math.isnan(v) for v in values)
    assert 1e308 in values and float("-inf") in values and "junk" in values
    assert {"close": 1.0, "RSI": None} in rows  # one odd column among ordinary ones


def test_a_profile_keeping_its_contract_passes() -> None:
    check_contract(_profile(_fine))


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        (lambda row: {"x": row["close"] * 2}, "compute raised"),
        (lambda row: {"x": float("nan")}, "numbers must be finite"),
        (lambda row: {"x": {1}}, "a set for 'x'"),
        (lambda row: {"x": 1} if row else {"y": 1}, "keys differ between rows"),
    ],
)
def test_a_broken_contract_is_named(compute: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_contract(_profile(compute))


def test_compute_values_must_agree_with_compute() -> None:
    profile = _profile(_fine, compute_values=lambda values: {"close": 0})
    with pytest.raises(AssertionError, match="compute_values differs"):
        check_contract(profile)
    agreeing = _profile(_fine, compute_values=lambda v: _fine(dict(zip(COLUMNS, v, strict=True))))
    check_contract(agreeing)


@settings(max_examples=50, deadline=None)
@given(row=rows_strategy(_profile(_fine)))
def test_rows_strategy_gives_rows_of_the_profiles_columns(row: dict[str, Any]) -> None:
    assert set(row) <= set(COLUMNS)
    check_contract(_profile(_fine), [row])


def test_the_kit_imports_without_hypothesis() -> None:
    code = ("import sys; sys.modules['hypothesis'] = None; import quartsig.testing as t; "
            "print(len(list(t.edge_rows(t.Profile('p', '', ('close',), dict)))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 10
