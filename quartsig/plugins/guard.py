"""Charging a failure to the profile that caused it, and to no one else.

Two kinds of plugin failure reach the collector at run time:

- TradingView refuses a request over a column one profile asked for (``400 Unknown field``).
  The column is *quarantined*: left out of every request for :data:`QUARANTINE` seconds, so the
  other keys of the request are fetched without it and the profile computes with it as null. A
  profile left with no column at all is *disabled* for the same time. Either way the profile's
  subscribers are told (``profile_failed``) and keep their subscription, so data flows again
  when the quarantine lifts.
- A ``compute`` raises, returns something that is not a flat dict of JSON scalars, or takes
  longer than :data:`COMPUTE_BUDGET`. :func:`run_compute` turns each into a :class:`Failure`
  for that key; the collector counts it per profile, tells the key's subscribers, keeps the
  key's last good data and carries on with the other keys of the tick.

Everything here is synchronous and pure but for the clock it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from quartsig.plugins.profiles import Profile

#: Seconds a column TradingView refused stays out of requests before it is tried again
#: (TradingView's fields do change; a column may come back).
QUARANTINE: Final = 600.0
#: Seconds one call of ``compute`` may take; a slower one's result is thrown away as a failure.
#: ``full`` takes about 20 µs a row, so only a profile that is broken meets this bound.
COMPUTE_BUDGET: Final = 0.05

_PLAIN: Final = frozenset({str, bool})
#: What the encoder can write as a JSON integer (orjson: 64 bits, signed or unsigned).
_INT_MIN: Final = -(2**63)
_INT_END: Final = 2**64


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one compute's result was refused: ``kind`` (a metrics label) and a message."""

    kind: str  # "exception" | "bad_value" | "slow"
    message: str


def check_data(data: object) -> str | None:
    """What is wrong with a compute's result, or ``None`` when it is a flat dict of JSON scalars.

    NaN and infinities are refused too: the encoder would send them as null, and a NaN, never
    equal to itself, would be sent as a change on every tick.
    """
    if type(data) is not dict:
        return f"compute returned a {type(data).__name__}, not a dict"
    for name, value in data.items():
        if type(name) is not str:
            return f"compute returned a {type(name).__name__} key {name!r}; keys must be strings"
        if value is None or type(value) in _PLAIN:
            continue
        if type(value) is int:
            if _INT_MIN <= value < _INT_END:
                continue
            return f"compute returned {value!r} for {name!r}; integers must fit in 64 bits"
        if isinstance(value, float):
            if value - value == 0.0:  # NaN - NaN and inf - inf are NaN
                continue
            return f"compute returned {value!r} for {name!r}; numbers must be finite or None"
        return (
            f"compute returned a {type(value).__name__} for {name!r}; values must be strings, "
            "finite numbers, booleans or None"
        )
    return None


def run_compute(
    profile: Profile,
    bases: tuple[str, ...],
    values: Sequence[Any],
    *,
    budget: float = COMPUTE_BUDGET,
    perf: Callable[[], float] = time.thread_time,
) -> dict[str, Any] | Failure:
    """``profile``'s data for one row's ``values`` (in ``bases`` order), or why there is none.

    A compute cannot be interrupted (it is synchronous code), so a slow one is found out only
    when it returns; its result is then refused, so that it is noticed and counted. The time is
    the thread's CPU time, not the wall clock's: on a busy machine a thread descheduled in the
    middle of a 20 µs compute "took" 60-200 ms (seen in bench.tick), and ``full`` failed keys
    that were fine. Built-in (``checked``) profiles are not timed: their tests bound them."""
    timed = not profile.checked
    started = perf() if timed else 0.0
    try:
        if profile.compute_values is not None:
            data = profile.compute_values(values)
        else:
            data = profile.compute(dict(zip(bases, values, strict=True)))
    except Exception as error:
        return Failure("exception", f"compute raised {type(error).__name__}: {error}")
    elapsed = perf() - started if timed else 0.0
    if elapsed > budget:
        return Failure(
            "slow", f"compute took {elapsed * 1000:.0f} ms, over the {budget * 1000:.0f} ms bound"
        )
    if not isinstance(data, dict):
        return Failure("bad_value", f"compute returned a {type(data).__name__}, not a dict")
    problem = None if profile.checked else check_data(data)
    if problem is not None:
        return Failure("bad_value", problem)
    return data


@dataclass(slots=True)
class Charge:
    """A profile's current quarantine: what is withheld, why, and until when (monotonic)."""

    reason: str
    until: float
    disabled: bool = False


class Quarantine:
    """Columns TradingView refused, and the profiles that lost them, until each lifts."""

    def __init__(
        self,
        columns: Mapping[str, tuple[str, ...]],
        *,
        period: float = QUARANTINE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.all_columns = dict(columns)
        self.period = period
        self.clock = clock
        #: Base column -> monotonic time its quarantine lifts.
        self.columns: dict[str, float] = {}
        #: Profile -> why it is charged; present while any of its columns (or itself) is out.
        self.charges: dict[str, Charge] = {}
        self._active: dict[str, tuple[str, ...]] | None = None

    def owners(self, base: str) -> list[str]:
        """The profiles that ask for ``base`` (and are not disabled already)."""
        return sorted(
            name
            for name, columns in self.all_columns.items()
            if base in columns and not self._disabled(name)
        )

    def refuse_column(self, base: str, message: str) -> list[str]:
        """Withhold ``base`` from every request; the profiles charged with it (none: unknown)."""
        owners = self.owners(base)
        if not owners:
            return []
        until = self.clock() + self.period
        self.columns[base] = until
        self._active = None
        for name in owners:
            left = [c for c in self.all_columns[name] if c not in self.columns]
            disabled = not left
            reason = (
                f"TradingView refused column {base} ({message}); "
                + ("the profile has no other column and is disabled"
                   if disabled else "the profile is computed without it")
                + f" for {self.period:.0f} s"
            )
            self.charges[name] = Charge(reason, until, disabled)
        return owners

    def disable(self, profile: str, message: str) -> None:
        """Leave ``profile`` out of every request (a refusal no single column explains)."""
        self.charges[profile] = Charge(
            f"TradingView refused the profile's request ({message}); the profile is disabled "
            f"for {self.period:.0f} s",
            self.clock() + self.period,
            disabled=True,
        )
        self._active = None

    def lift(self) -> list[str]:
        """Lift what has expired; what was lifted, as text for a log line."""
        now = self.clock()
        lifted = [f"column {base}" for base, until in self.columns.items() if until <= now]
        for base in [base for base, until in self.columns.items() if until <= now]:
            del self.columns[base]
        for name in list(self.charges):
            charge = self.charges[name]
            still_out = any(c in self.columns for c in self.all_columns[name])
            if charge.until <= now and not still_out:
                del self.charges[name]
                lifted.append(f"profile {name}")
        if lifted:
            self._active = None
        return lifted

    def reason(self, profile: str) -> str | None:
        charge = self.charges.get(profile)
        return None if charge is None else charge.reason

    def active(self) -> dict[str, tuple[str, ...]]:
        """Each profile that can be fetched and the columns to fetch for it."""
        if self._active is None:
            self._active = {
                name: tuple(c for c in columns if c not in self.columns)
                for name, columns in self.all_columns.items()
                if not self._disabled(name)
            }
        return self._active

    def withheld(self, bases: Iterable[str]) -> bool:
        return any(base in self.columns for base in bases)

    def _disabled(self, profile: str) -> bool:
        charge = self.charges.get(profile)
        return charge is not None and charge.disabled
