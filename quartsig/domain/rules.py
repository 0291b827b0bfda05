"""Labels from TradingView's ratings, per-indicator actions, and their counts.

The facts live in ``shared/recommendation-rules.md``. They are encoded three times,
each for a reason:

- here, the reference: rules as data (:data:`OSCILLATORS`, :data:`MOVING_AVERAGES`),
  read by every profile and by the tests;
- :func:`quartsig.plugins.builtins.full._compile_kernel` generates the ``full`` profile's
  per-row kernel from these same tables at import (speed; it cannot drift, and
  tests/test_builtins.py checks it gives what :func:`decide_all` gives);
- :func:`quartsig.demo.market.derive` is the demo market's own, independent copy:
  it plays TradingView's part (component values in, ``Rec.*`` and ``Recommend.*``
  out), so that a rule wrong here is not silently agreed with by the data we test
  against. tests/test_rules.py holds this encoding to the document, and
  tests/test_standin.py the demo market's.

Everything here is pure and total: the scanner sends ``null`` for
missing values and a misbehaving upstream could send anything, so every public
function maps bad input to ``None`` instead of raising. A tick computes tens of
thousands of rows, so the hot path (:meth:`Rule.apply`, :func:`decide_all`) assumes
its inputs were cleaned once by :func:`numbers` rather than re-checking each value
per rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from numbers import Real
from operator import itemgetter
from typing import Any, Final, Literal, TypeAlias

Number: TypeAlias = float | int
Action: TypeAlias = Literal["BUY", "SELL", "NEUTRAL"]
Label: TypeAlias = Literal["STRONG_SELL", "SELL", "NEUTRAL", "BUY", "STRONG_BUY"]

STRONG_SELL: Final = "STRONG_SELL"
SELL: Final = "SELL"
NEUTRAL: Final = "NEUTRAL"
BUY: Final = "BUY"
STRONG_BUY: Final = "STRONG_BUY"

# orjson refuses integers outside 64 bits; such values are not scanner data anyway.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def number(value: object) -> Number | None:
    """Return ``value`` as a finite JSON number, or ``None`` if it is not one.

    Booleans are ``int`` subclasses in Python but never indicator values, and
    NaN/infinity cannot be encoded as JSON, so all of them become ``None``.
    The exact-type checks come first because plain floats are the common case.
    """
    kind = type(value)
    if kind is float:
        return value if value - value == 0.0 else None  # type: ignore[operator,return-value]
    if kind is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else None  # type: ignore[operator,return-value]
    if value is None or kind is bool or not isinstance(value, Real):
        return None
    try:
        converted = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return converted if math.isfinite(converted) else None


def numbers(
    row: Mapping[str, Any], names: Iterable[str], *, into: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Pick ``names`` from ``row`` as clean numbers; a missing key counts as null.

    Profiles call this once per row so that every rule downstream can compare
    values without guarding against strings, NaN or absent keys. ``into`` lets a hot
    profile pass a copy of a pre-sized template dict, which skips the dict's growth
    steps and fixes the key order of its output.
    """
    get = row.get
    clean: dict[str, Any] = {} if into is None else into
    for name in names:
        value = get(name)
        # A finite float is the common case; checking it inline skips a call per value.
        clean[name] = value if type(value) is float and value - value == 0.0 else number(value)
    return clean


def label(value: object) -> Label | None:
    """Map a ``Recommend.*`` rating to its label, or ``None`` for null or out-of-range values.

    The boundaries follow the table in the rules document exactly: -0.5 and -0.1
    belong to the band above them, 0.1 and 0.5 to the band below them.
    """
    rating = number(value)
    if rating is None or not -1 <= rating <= 1:
        return None
    if rating < -0.5:
        return STRONG_SELL
    if rating < -0.1:
        return SELL
    if rating <= 0.1:
        return NEUTRAL
    if rating <= 0.5:
        return BUY
    return STRONG_BUY


@dataclass(frozen=True, slots=True)
class Rule:
    """One indicator's action: the columns it reads, by name, and how it decides.

    Naming the inputs, rather than reading values by position, is what keeps a
    null in one column from shifting another indicator's verdict (the bug in
    tradingview-ta this design avoids). ``decide`` only ever sees finite numbers.
    """

    inputs: tuple[str, ...]
    decide: Callable[..., Action]
    # itemgetter returns a bare value for one name and a tuple for several; _single says which.
    _pick: Callable[[Mapping[str, Any]], Any] = field(init=False, repr=False, compare=False)
    _single: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("a rule needs at least one input column")
        object.__setattr__(self, "_pick", itemgetter(*self.inputs))
        object.__setattr__(self, "_single", len(self.inputs) == 1)

    def __call__(self, row: Mapping[str, Any]) -> Action | None:
        """Decide from a raw row: any value, any missing key; never raises."""
        return self.apply(numbers(row, self.inputs))

    def apply(self, clean: Mapping[str, Number | None]) -> Action | None:
        """Decide from values already cleaned by :func:`numbers` (every input key present).

        This is the per-row hot path, so it trusts its input instead of re-cleaning it.
        """
        values = self._pick(clean)
        if self._single:
            return None if values is None else self.decide(values)
        return None if None in values else self.decide(*values)


def decide_all(rules: Iterable[Rule], clean: Mapping[str, Number | None]) -> list[Action | None]:
    """``[rule.apply(clean) for rule in rules]``, inlined: it saves a call per rule per row."""
    results: list[Action | None] = []
    append = results.append
    for rule in rules:
        values = rule._pick(clean)
        if rule._single:
            append(None if values is None else rule.decide(values))
        else:
            append(None if None in values else rule.decide(*values))
    return results


class _Votes(dict[Number, Action]):
    """TradingView's own per-indicator verdict: 1 buys, -1 sells, anything else is neutral.

    A dict lookup rather than a function: the usual values (-1, 0, 1, and their float
    twins, which hash alike) are answered in C without a Python call per rule per row.
    """

    def __missing__(self, rec: Number) -> Action:
        return NEUTRAL


_vote: Callable[[Number], Action] = _Votes({1: BUY, -1: SELL, 0: NEUTRAL}).__getitem__


def _rsi(rsi: Number, prev: Number) -> Action:
    if rsi < 30 and prev < rsi:
        return BUY
    if rsi > 70 and prev > rsi:
        return SELL
    return NEUTRAL


def _stoch(k: Number, d: Number, k_prev: Number, d_prev: Number) -> Action:
    if k < 20 and d < 20 and k > d and k_prev < d_prev:
        return BUY
    if k > 80 and d > 80 and k < d and k_prev > d_prev:
        return SELL
    return NEUTRAL


def _cci(cci: Number, prev: Number) -> Action:
    if cci < -100 and cci > prev:
        return BUY
    if cci > 100 and cci < prev:
        return SELL
    return NEUTRAL


def _adx(adx: Number, plus: Number, minus: Number, plus_prev: Number, minus_prev: Number) -> Action:
    if adx > 20 and plus_prev < minus_prev and plus > minus:
        return BUY
    if adx > 20 and plus_prev > minus_prev and plus < minus:
        return SELL
    return NEUTRAL


def _ao(ao: Number, prev: Number, prev2: Number) -> Action:
    if (ao > 0 and prev < 0) or (ao > 0 and prev > 0 and ao > prev and prev2 > prev):
        return BUY
    if (ao < 0 and prev > 0) or (ao < 0 and prev < 0 and ao < prev and prev2 < prev):
        return SELL
    return NEUTRAL


def _rising(value: Number, other: Number) -> Action:
    """BUY when ``value`` is above ``other``: momentum vs its last value, MACD vs its signal."""
    if value > other:
        return BUY
    if value < other:
        return SELL
    return NEUTRAL


def _below_close(average: Number, close: Number) -> Action:
    """A price above its moving average is an uptrend."""
    if average < close:
        return BUY
    if average > close:
        return SELL
    return NEUTRAL


#: The 11 oscillator actions, keyed by the names the ``act.*`` data keys use.
OSCILLATORS: Final[dict[str, Rule]] = {
    "RSI": Rule(("RSI", "RSI[1]"), _rsi),
    "STOCH.K": Rule(("Stoch.K", "Stoch.D", "Stoch.K[1]", "Stoch.D[1]"), _stoch),
    "CCI": Rule(("CCI20", "CCI20[1]"), _cci),
    "ADX": Rule(("ADX", "ADX+DI", "ADX-DI", "ADX+DI[1]", "ADX-DI[1]"), _adx),
    "AO": Rule(("AO", "AO[1]", "AO[2]"), _ao),
    "Mom": Rule(("Mom", "Mom[1]"), _rising),
    "MACD": Rule(("MACD.macd", "MACD.signal"), _rising),
    "Stoch.RSI": Rule(("Rec.Stoch.RSI",), _vote),
    "W%R": Rule(("Rec.WR",), _vote),
    "BBP": Rule(("Rec.BBPower",), _vote),
    "UO": Rule(("Rec.UO",), _vote),
}

_AVERAGES: Final = tuple(
    f"{kind}{length}" for length in (10, 20, 30, 50, 100, 200) for kind in ("EMA", "SMA")
)

#: The 15 moving-average actions, keyed by the names the ``act.*`` data keys use.
MOVING_AVERAGES: Final[dict[str, Rule]] = {
    **{average: Rule((average, "close"), _below_close) for average in _AVERAGES},
    "Ichimoku": Rule(("Rec.Ichimoku",), _vote),
    "VWMA": Rule(("Rec.VWMA",), _vote),
    "HullMA": Rule(("Rec.HullMA9",), _vote),
}


def inputs(rules: Mapping[str, Rule]) -> tuple[str, ...]:
    """Every column the ``rules`` read, once each, in first-use order (a profile's column list)."""
    return tuple(dict.fromkeys(name for rule in rules.values() for name in rule.inputs))


@dataclass(frozen=True, slots=True)
class Counts:
    """How many non-null actions said BUY, SELL and NEUTRAL; nulls are not votes."""

    buy: int
    sell: int
    neutral: int


def count(actions: Iterable[Action | None]) -> Counts:
    """Tally ``actions``, leaving out the nulls."""
    seen = actions if isinstance(actions, list | tuple) else list(actions)
    return Counts(seen.count(BUY), seen.count(SELL), seen.count(NEUTRAL))
