"""The ``summary`` profile: TradingView's overall rating and its label, one column per row.

The cheapest useful subscription: one column per timeframe keeps requests for
large watch-lists small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from quartsig.domain.rules import label, number
from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.profiles import Profile

COLUMNS = ("Recommend.All",)


def compute(row: Mapping[str, Any]) -> dict[str, Any]:
    """``Recommend.All`` as a clean number and its label."""
    return compute_values((row.get("Recommend.All"),))


def compute_values(values: Sequence[Any]) -> dict[str, Any]:
    """The same from the row's values in ``COLUMNS`` order (what the collector passes)."""
    rating = number(values[0])
    return {"Recommend.All": rating, "rec.all": label(rating)}


PROFILE = Profile(
    name="summary",
    description="TradingView's overall rating (Recommend.All) and its label",
    columns=COLUMNS,
    compute=compute,
    compute_values=compute_values,
    checked=True,  # tests/test_builtins.py runs it over arbitrary rows (quartsig.testing)
)


@hookimpl
def register_profiles() -> list[Profile]:
    return [PROFILE]
