"""Profile validation: a bad profile fails when it is built, naming itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from quartsig.plugins.profiles import Profile, ProfileError


def _echo(row: Mapping[str, Any]) -> dict[str, Any]:
    return dict(row)


def _profile(**overrides: Any) -> Profile:
    fields: dict[str, Any] = {
        "name": "trend",
        "description": "A test profile",
        "columns": ("close", "EMA20"),
        "compute": _echo,
    }
    return Profile(**(fields | overrides))


def test_a_valid_profile_keeps_its_fields() -> None:
    profile = _profile()
    assert profile.name == "trend"
    assert profile.columns == ("close", "EMA20")
    assert profile.compute({"close": 1.0}) == {"close": 1.0}


@pytest.mark.parametrize("name", ["a", "ma", "my-profile_2", "x" * 32])
def test_good_names(name: str) -> None:
    assert _profile(name=name).name == name


@pytest.mark.parametrize(
    "name", ["", "Full", "2fast", "-x", "_x", "a b", "a.b", "x" * 33, "ma\n", "é", None, 3]
)
def test_bad_names(name: object) -> None:
    with pytest.raises(ProfileError, match="profile name"):
        _profile(name=name)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ((), "at least one column"),
        (("RSI|5",), "base name"),
        (("",), "base name"),
        ((None,), "base name"),
        (("RSI", "close", "RSI"), r"duplicate columns \['RSI'\]"),
        (["RSI"], "tuple"),
        ("RSI", "tuple"),
    ],
)
def test_bad_columns(columns: object, message: str) -> None:
    with pytest.raises(ProfileError, match=message) as info:
        _profile(columns=columns)
    assert "'trend'" in str(info.value)


def test_description_and_compute_are_checked() -> None:
    with pytest.raises(ProfileError, match="description"):
        _profile(description=None)
    with pytest.raises(ProfileError, match="callable"):
        _profile(compute="not a function")


def test_profile_error_is_a_value_error() -> None:
    assert issubclass(ProfileError, ValueError)


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _profile().name = "other"  # type: ignore[misc]
