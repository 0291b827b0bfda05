"""Timeframes and TradingView's column suffixes for them.

One scanner request may mix timeframes freely, because the interval is part of
each column name (``RSI|5``); this table is the only place that knows the
suffixes. ``1d`` has no suffix (``|1D`` is not a valid field) and ``1M`` is a
month, not a minute.
"""

from __future__ import annotations

from quartsig.domain.columns import FULL_COLUMNS

SUFFIXES: dict[str, str] = {
    "1m": "|1",
    "5m": "|5",
    "15m": "|15",
    "30m": "|30",
    "1h": "|60",
    "2h": "|120",
    "4h": "|240",
    "1d": "",
    "1W": "|1W",
    "1M": "|1M",
}

TIMEFRAMES: tuple[str, ...] = tuple(SUFFIXES)

_BY_SUFFIX: dict[str, str] = {suffix: tf for tf, suffix in SUFFIXES.items()}


class TimeframeError(ValueError):
    """Not one of :data:`TIMEFRAMES`."""


def parse_timeframe(text: object) -> str:
    """Return the canonical timeframe; case matters only for ``1m`` (minute) vs ``1M`` (month)."""
    if not isinstance(text, str) or text not in SUFFIXES:
        shown = text if isinstance(text, str) and len(text) <= 16 else type(text).__name__
        raise TimeframeError(f"unknown timeframe {shown!r}; use one of {' '.join(TIMEFRAMES)}")
    return text


def column(base: str, timeframe: str) -> str:
    """The scanner column for ``base`` on ``timeframe``: ``column("RSI", "5m") == "RSI|5"``."""
    return base + SUFFIXES[timeframe]


#: Where each base column of the ``full`` profile sits in a timeframe's run of columns: in the
#: profile's own order, so that a run of exactly its columns is, as it stands, the values the
#: profile's kernel takes (no per-key tuple picked out of it, see ``Layout.run_picker``).
_RANK: dict[str, int] = {base: rank for rank, base in enumerate(FULL_COLUMNS)}


def frame_order(name: str) -> tuple[str, int, str]:
    """A sort key for scanner columns: by timeframe suffix, so the columns of one timeframe sit
    together in a request and in each row of its reply (``"Recommend.Other"``,
    ``"Recommend.All"`` first, then ``"Recommend.Other|1"``, ...); within one, the ``full``
    profile's columns in its order, then any other by name."""
    base, _, suffix = name.partition("|")
    return suffix, _RANK.get(base, len(_RANK)), name


def split_column(name: str) -> tuple[str, str]:
    """Inverse of :func:`column`: ``"RSI|5" -> ("RSI", "5m")``, ``"RSI" -> ("RSI", "1d")``."""
    base, bar, suffix = name.partition("|")
    return base, _BY_SUFFIX[bar + suffix]
