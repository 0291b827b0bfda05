"""Alert rules as values: what a user wants to hear about, and how often.

A rule is a *condition* on one output of a key's profile data, watched on one key (or, for a
watchlist, on every card of the user's), plus a *frequency*, a cool-down and an expiry.
Three conditions cover what users ask for (issue #22):

- :class:`LabelChange`: a label output (``rec.all``) changes, optionally only from or to
  some labels (``to={"STRONG_BUY"}``; ``to={"SELL", "STRONG_SELL"}``; neither: any change);
- :class:`Crossing`: a numeric output crosses a level (``RSI`` crosses below 30);
- a watchlist: a :class:`LabelChange` watched on many keys (:func:`watchlist`).

Rules are frozen and validated on construction, so the evaluator's hot path never re-checks
them, and bad input from the WebSocket or the HTTP API gets one :class:`RuleError` naming the
field. :meth:`Rule.spec` / :func:`rule_from_spec` are the JSON shape stored in the database
and spoken by the API.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, get_args

from quartsig.domain.model import Key
from quartsig.domain.rules import BUY, NEUTRAL, SELL, STRONG_BUY, STRONG_SELL
from quartsig.domain.timeframes import TimeframeError, parse_timeframe

Frequency: TypeAlias = Literal["every_time", "once_per_bar", "once_per_bar_close", "only_once"]
FREQUENCIES: Final[tuple[str, ...]] = get_args(Frequency)

#: Labels in rank order: hysteresis moves along this line.
LABELS: Final = (STRONG_SELL, SELL, NEUTRAL, BUY, STRONG_BUY)
RANK: Final = {name: rank for rank, name in enumerate(LABELS)}

#: The number each label output is computed from: hysteresis needs the number, not the label.
LABEL_SOURCES: Final = {
    "rec.all": "Recommend.All",
    "rec.ma": "Recommend.MA",
    "rec.other": "Recommend.Other",
}

#: The widest label margin allowed: the NEUTRAL band is 0.2 wide, so a margin of half of it
#: still lets a value that stays put inside a band settle on that band's label.
MAX_LABEL_MARGIN: Final = 0.1

MAX_KEYS: Final = 500
"""Keys one watchlist rule may watch (a board holds far fewer cards)."""

MAX_NAME: Final = 64


class RuleError(ValueError):
    """A rule cannot be built from this input; the message names the field and why."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True, slots=True)
class LabelChange:
    """A label output moves; ``to``/``from_`` (empty: any) say which moves count."""

    output: str = "rec.all"
    to: frozenset[str] = frozenset()
    from_: frozenset[str] = frozenset()
    #: Hysteresis on the label's number (``rec.*`` outputs only): a new label is taken only
    #: once the number is this far past the boundary, so a rating wobbling on +-0.1 is quiet.
    margin: float = 0.0

    def __post_init__(self) -> None:
        _check_output(self.output)
        for name, labels in (("to", self.to), ("from", self.from_)):
            unknown = set(labels) - RANK.keys()
            if unknown:
                raise RuleError(name, f"unknown labels {sorted(unknown)}; use {', '.join(LABELS)}")
        if not (_finite(self.margin) and 0 <= self.margin <= MAX_LABEL_MARGIN):
            raise RuleError("margin", f"must be a number from 0 to {MAX_LABEL_MARGIN}")
        if self.margin and self.output not in LABEL_SOURCES:
            raise RuleError("margin", f"only {', '.join(LABEL_SOURCES)} have a number to "
                            "apply a margin to")

    @property
    def reads(self) -> str:
        """The data field whose change can move this condition."""
        return LABEL_SOURCES[self.output] if self.margin else self.output

    def matches(self, before: str, after: str) -> bool:
        return (not self.to or after in self.to) and (not self.from_ or before in self.from_)

    def spec(self) -> dict[str, Any]:
        return {"kind": "label", "output": self.output, "to": sorted(self.to, key=RANK.__getitem__),
                "from": sorted(self.from_, key=RANK.__getitem__), "margin": self.margin}


@dataclass(frozen=True, slots=True)
class Crossing:
    """A number crosses ``level`` going ``direction``; it re-arms only after moving back past
    the level by ``margin`` (hysteresis), so RSI wobbling on 30 fires once."""

    output: str
    direction: Literal["above", "below"]
    level: float
    margin: float = 0.0

    def __post_init__(self) -> None:
        _check_output(self.output)
        if self.direction not in ("above", "below"):
            raise RuleError("direction", "must be 'above' or 'below'")
        if not _finite(self.level):
            raise RuleError("level", "must be a finite number")
        if not (_finite(self.margin) and self.margin >= 0):
            raise RuleError("margin", "must be a number >= 0")

    @property
    def reads(self) -> str:
        return self.output

    @property
    def name(self) -> str:
        """The transition's name in triggers and dedupe keys: ``below 30``."""
        return f"{self.direction} {self.level:g}"

    def spec(self) -> dict[str, Any]:
        return {"kind": "cross", "output": self.output, "direction": self.direction,
                "level": self.level, "margin": self.margin}


Condition: TypeAlias = LabelChange | Crossing


@dataclass(frozen=True, slots=True)
class Rule:
    """One user's alert. ``version`` grows with every edit: a trigger names the version it
    fired under, so an edit re-arms the rule instead of being deduplicated against the old."""

    id: int
    owner: int  # the account's Telegram id
    keys: tuple[Key, ...]
    condition: Condition
    frequency: Frequency = "every_time"
    cooldown: float = 0.0  # seconds between two firings on one key
    expires_at: float | None = None  # Unix seconds; None: open-ended
    version: int = 1
    name: str = ""
    watchlist: bool = False
    muted: bool = False
    #: Extra, unvalidated data a channel may use (nothing reads it here).
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise RuleError("keys", "a rule watches at least one key")
        if len(self.keys) > MAX_KEYS:
            raise RuleError("keys", f"at most {MAX_KEYS} keys per rule")
        if not self.watchlist and len(self.keys) != 1:
            raise RuleError("keys", "only a watchlist rule watches several keys")
        if self.watchlist and not isinstance(self.condition, LabelChange):
            raise RuleError("condition", "a watchlist rule watches label changes")
        if self.frequency not in FREQUENCIES:
            raise RuleError("frequency", f"use one of {', '.join(FREQUENCIES)}")
        if not (_finite(self.cooldown) and self.cooldown >= 0):
            raise RuleError("cooldown", "must be a number of seconds >= 0")
        if self.expires_at is not None and not _finite(self.expires_at):
            raise RuleError("expires_at", "must be Unix seconds or null")
        if len(self.name) > MAX_NAME:
            raise RuleError("name", f"at most {MAX_NAME} characters")

    def spec(self) -> dict[str, Any]:
        """The JSON shape of the rule's definition (no id, owner or version)."""
        return {
            "keys": [list(key) for key in self.keys],
            "condition": self.condition.spec(),
            "frequency": self.frequency,
            "cooldown": self.cooldown,
            "expires_at": self.expires_at,
            "name": self.name,
            "watchlist": self.watchlist,
        }


def watchlist(id: int, owner: int, keys: Iterable[Key], **options: Any) -> Rule:
    """"Any of my cards changes label": one rule over all of ``keys``."""
    condition = options.pop("condition", LabelChange())
    return Rule(id, owner, tuple(dict.fromkeys(keys)), condition, watchlist=True, **options)


def rule_from_spec(spec: object, *, id: int = 0, owner: int = 0, version: int = 1,
                   muted: bool = False) -> Rule:
    """The rule ``spec`` describes (the shape of :meth:`Rule.spec`); :class:`RuleError` on any
    field that is missing, of the wrong type or out of range."""
    if not isinstance(spec, Mapping):
        raise RuleError("rule", "must be an object")
    unknown = set(spec) - {"keys", "condition", "frequency", "cooldown", "expires_at", "name",
                           "watchlist"}
    if unknown:
        raise RuleError(sorted(unknown)[0], "unknown field")
    return Rule(
        id=id, owner=owner, version=version, muted=muted,
        keys=_keys(spec.get("keys")),
        condition=_condition(spec.get("condition")),
        frequency=_string(spec.get("frequency", "every_time"), "frequency"),  # type: ignore[arg-type]
        cooldown=_number(spec.get("cooldown", 0.0), "cooldown"),
        expires_at=(None if spec.get("expires_at") is None
                    else _number(spec.get("expires_at"), "expires_at")),
        name=_string(spec.get("name", ""), "name"),
        watchlist=_bool(spec.get("watchlist", False), "watchlist"),
    )


def _keys(value: object) -> tuple[Key, ...]:
    if not isinstance(value, list | tuple):
        raise RuleError("keys", "must be a list of [profile, symbol, tf]")
    keys = []
    for item in value:
        if not (isinstance(item, list | tuple) and len(item) == 3
                and all(isinstance(part, str) and part for part in item)):
            raise RuleError("keys", "each key is [profile, symbol, tf]")
        profile, symbol, tf = item
        try:
            tf = parse_timeframe(tf)
        except TimeframeError as error:
            raise RuleError("keys", str(error)) from None
        keys.append(Key(profile, symbol, tf))
    return tuple(dict.fromkeys(keys))


def _condition(value: object) -> Condition:
    if not isinstance(value, Mapping):
        raise RuleError("condition", "must be an object with a kind")
    kind = value.get("kind")
    if kind == "label":
        return LabelChange(
            output=_string(value.get("output", "rec.all"), "output"),
            to=_labels(value.get("to"), "to"),
            from_=_labels(value.get("from"), "from"),
            margin=_number(value.get("margin", 0.0), "margin"),
        )
    if kind == "cross":
        return Crossing(
            output=_string(value.get("output"), "output"),
            direction=_string(value.get("direction"), "direction"),  # type: ignore[arg-type]
            level=_number(value.get("level"), "level"),
            margin=_number(value.get("margin", 0.0), "margin"),
        )
    raise RuleError("condition", "kind must be 'label' or 'cross'")


def _labels(value: object, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    if not (isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)):
        raise RuleError(name, "must be a label or a list of labels")
    return frozenset(value)


def _check_output(output: object) -> None:
    if not (isinstance(output, str) and 0 < len(output) <= MAX_NAME):
        raise RuleError("output", "must name one output of the profile's data")


def _finite(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _number(value: object, name: str) -> float:
    if not _finite(value):
        raise RuleError(name, "must be a finite number")
    return float(value)  # type: ignore[arg-type]


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise RuleError(name, "must be a string")
    return value


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise RuleError(name, "must be true or false")
    return value


__all__ = ["BUY", "FREQUENCIES", "LABELS", "NEUTRAL", "SELL", "STRONG_BUY", "STRONG_SELL",
           "Condition", "Crossing", "Frequency", "LabelChange", "Rule", "RuleError",
           "rule_from_spec", "watchlist"]
