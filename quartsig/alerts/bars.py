"""When a key's bar opens: the "bar time" of a trigger, and what "once per bar" counts.

Bars are aligned to UTC (minutes and hours on their multiples since the epoch, days at
midnight, weeks on Monday, months on the 1st), as TradingView draws crypto; exchanges whose
session opens elsewhere get bars offset from theirs, which only shifts where "once per bar"
re-opens, never whether a change is seen.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

_MINUTE: Final = 60_000
SIZES: Final = {
    "1m": _MINUTE, "5m": 5 * _MINUTE, "15m": 15 * _MINUTE, "30m": 30 * _MINUTE,
    "1h": 60 * _MINUTE, "2h": 120 * _MINUTE, "4h": 240 * _MINUTE, "1d": 1440 * _MINUTE,
    "1W": 7 * 1440 * _MINUTE,
}
"""Milliseconds per bar, for every timeframe but the month (whose length varies)."""

_MONDAY: Final = 4 * 1440 * _MINUTE  # 1970-01-05, the first Monday after the epoch


def bar_open(tf: str, ts: int) -> int:
    """The open (Unix ms) of the ``tf`` bar holding the instant ``ts`` (Unix ms)."""
    if tf == "1M":
        moment = datetime.fromtimestamp(ts / 1000, UTC)
        return int(datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp() * 1000)
    size = SIZES[tf]
    if tf == "1W":
        return ts - (ts - _MONDAY) % size
    return ts - ts % size
