"""The scanner's column catalogue: what the ``full`` profile asks for, and what exists.

Names are base names, without the interval suffix (see :mod:`quartsig.domain.timeframes`).
The list is the one the tradingview-ta library requests; its order does not matter.
"""

from __future__ import annotations

RATINGS = ("Recommend.Other", "Recommend.All", "Recommend.MA")

OSCILLATOR_INPUTS = (
    "RSI", "RSI[1]", "Stoch.K", "Stoch.D", "Stoch.K[1]", "Stoch.D[1]", "CCI20", "CCI20[1]",
    "ADX", "ADX+DI", "ADX-DI", "ADX+DI[1]", "ADX-DI[1]", "AO", "AO[1]", "AO[2]", "Mom",
    "Mom[1]", "MACD.macd", "MACD.signal", "Rec.Stoch.RSI", "Stoch.RSI.K", "Rec.WR", "W.R",
    "Rec.BBPower", "BBPower", "Rec.UO", "UO",
)  # fmt: skip

PRICES = ("open", "high", "low", "close", "volume", "change")

MOVING_AVERAGES = (
    "EMA5", "SMA5", "EMA10", "SMA10", "EMA20", "SMA20", "EMA30", "SMA30", "EMA50", "SMA50",
    "EMA100", "SMA100", "EMA200", "SMA200", "Rec.Ichimoku", "Ichimoku.BLine", "Rec.VWMA",
    "VWMA", "Rec.HullMA9", "HullMA9",
)  # fmt: skip

OTHERS = ("P.SAR", "BB.lower", "BB.upper")

PIVOTS = tuple(
    f"Pivot.M.{kind}.{level}"
    for kind in ("Classic", "Fibonacci", "Camarilla", "Woodie")
    for level in ("S3", "S2", "S1", "Middle", "R1", "R2", "R3")
) + tuple(f"Pivot.M.Demark.{level}" for level in ("S1", "Middle", "R1"))

FULL_COLUMNS: tuple[str, ...] = (
    RATINGS + OSCILLATOR_INPUTS + PRICES + MOVING_AVERAGES + OTHERS + PIVOTS
)

#: Other valid fields seen in the wild; the stand-in scanner accepts them too.
EXTRA_COLUMNS: tuple[str, ...] = ("RSI7", "Stoch.RSI.D", "ATR", "Volatility.D", "description")

KNOWN_COLUMNS: frozenset[str] = frozenset(FULL_COLUMNS + EXTRA_COLUMNS)

assert len(FULL_COLUMNS) == 91, len(FULL_COLUMNS)
