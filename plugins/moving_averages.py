"""The ``ma`` profile: moving averages only, with their actions, counts and ``rec.ma``.

A lighter alternative to ``full`` for trend-following boards: 23 columns instead of
91, so the same request budget covers about four times as many tickers. It is also
the reference example for plugin authors (see ``docs/plugins.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quartsig.domain import columns, rules
from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.profiles import Profile

COLUMNS = ("Recommend.MA", "close", *columns.MOVING_AVERAGES)

_RULES = tuple(rules.MOVING_AVERAGES.values())
_ACTION_KEYS = tuple(f"act.{name}" for name in rules.MOVING_AVERAGES)


def compute(row: Mapping[str, Any]) -> dict[str, Any]:
    """Each column as a number or null, ``rec.ma``, ``act.<name>`` and ``ma.buy/sell/neutral``."""
    data: dict[str, Any] = rules.numbers(row, COLUMNS)
    data["rec.ma"] = rules.label(data["Recommend.MA"])
    actions = rules.decide_all(_RULES, data)
    data.update(zip(_ACTION_KEYS, actions, strict=True))
    counts = rules.count(actions)
    data["ma.buy"] = counts.buy
    data["ma.sell"] = counts.sell
    data["ma.neutral"] = counts.neutral
    return data


@hookimpl
def register_profiles() -> list[Profile]:
    return [
        Profile(
            name="ma",
            description="Moving averages and close, with per-average actions and rec.ma",
            columns=COLUMNS,
            compute=compute,
        )
    ]
