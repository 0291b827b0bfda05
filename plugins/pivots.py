"""The ``pivots`` profile: monthly pivot levels, the close, and the band the close sits in.

Traders read pivots as support/resistance ladders; the useful fact is which rung the
price is between, so this profile computes it per pivot method rather than making
every client sort seven numbers.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from quartsig.domain import columns, rules
from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.profiles import Profile

#: Pivot methods and their levels, lowest first, as TradingView names them.
METHODS: dict[str, tuple[str, ...]] = {
    "Classic": ("S3", "S2", "S1", "Middle", "R1", "R2", "R3"),
    "Fibonacci": ("S3", "S2", "S1", "Middle", "R1", "R2", "R3"),
    "Camarilla": ("S3", "S2", "S1", "Middle", "R1", "R2", "R3"),
    "Woodie": ("S3", "S2", "S1", "Middle", "R1", "R2", "R3"),
    "Demark": ("S1", "Middle", "R1"),
}

COLUMNS = ("close", *columns.PIVOTS)

_LADDERS = tuple(
    (f"band.{method}", tuple((level, f"Pivot.M.{method}.{level}") for level in levels))
    for method, levels in METHODS.items()
)


def band(close: float | int | None, ladder: Sequence[tuple[str, float | int | None]]) -> str | None:
    """Name the rung ``close`` is on: ``"<S3"``, ``"S1..Middle"``, ``">=R3"``...

    A band includes its lower level and excludes its upper one. The answer is null when
    the close or any level is null, or when the levels are not in ascending order, since
    a band between crossed levels would mislead rather than inform.
    """
    names = [name for name, _ in ladder]
    values = [value for _, value in ladder]
    if close is None or not values or None in values:
        return None
    if any(low > high for low, high in pairwise(values)):
        return None
    above = bisect_right(values, close)  # how many levels are at or below the close
    if above == 0:
        return f"<{names[0]}"
    if above == len(values):
        return f">={names[-1]}"
    return f"{names[above - 1]}..{names[above]}"


def compute(row: Mapping[str, Any]) -> dict[str, Any]:
    """Every pivot level and the close (number or null), plus ``band.<method>`` for each method."""
    data: dict[str, Any] = rules.numbers(row, COLUMNS)
    close = data["close"]
    for key, ladder in _LADDERS:
        data[key] = band(close, [(level, data[column]) for level, column in ladder])
    return data


@hookimpl
def register_profiles() -> list[Profile]:
    return [
        Profile(
            name="pivots",
            description="Monthly pivot levels (five methods), close, and the band the close is in",
            columns=COLUMNS,
            compute=compute,
        )
    ]
