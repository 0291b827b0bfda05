"""When keys nobody had go upstream: the early-fetch schedule, pure, with an injected clock.

A key new to this collector (nobody has its data) should not wait for the next full tick. The
collector hands every key :meth:`Broker.wanted` reports to :meth:`EarlyFetches.add`, asks
:meth:`EarlyFetches.due` when the gathered keys should go, and :meth:`EarlyFetches.take` s them
into a fetch of their own, which runs beside any other fetch or tick:

- a key is gathered once: while it waits, is in flight, or was deferred to the next full tick
  (the early-fetch budget was spent, or the fetch failed), asking again adds nothing;
- the window adapts: a key arriving after ``quiet`` seconds without any goes at once; keys
  arriving close behind one another (a burst: a page of cards, many clients at once) are
  gathered for ``window`` seconds, longer (up to ``max_window``) while other early fetches are
  still in flight, since the scanner's concurrency would queue them anyway;
- keys arriving while a fetch is in flight join the next fetch, which does not wait for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from quartsig.domain.model import Key


class EarlyFetches:
    def __init__(
        self,
        *,
        window: float = 0.03,
        max_window: float = 0.25,
        quiet: float = 0.1,
        max_keys: int = 2000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_window = max(max_window, window)
        self.quiet = quiet
        self.max_keys = max_keys
        self.clock = clock
        #: Gathered, not yet taken.
        self.pending: set[Key] = set()
        #: Taken by a fetch that has not finished.
        self.in_flight: set[Key] = set()
        #: Waiting for the next full tick (budget spent, or their early fetch failed).
        self.deferred: set[Key] = set()
        #: How many taken batches have not finished.
        self.fetches = 0
        self._opened = 0.0
        self._burst = False
        self._last = -math.inf

    def add(self, keys: Iterable[Key]) -> set[Key]:
        """Gather ``keys``; returns those that were not already gathered, in flight or deferred."""
        new = set(keys) - self.pending - self.in_flight - self.deferred
        if not new:
            return new
        now = self.clock()
        close_behind = now - self._last < self.quiet
        if not self.pending:
            self._opened = now
            self._burst = close_behind
        elif close_behind:
            self._burst = True
        self._last = now
        self.pending |= new
        return new

    def due(self) -> float | None:
        """The instant (``clock``) the gathered keys should go; None when nothing is gathered."""
        if not self.pending:
            return None
        if not self._burst or len(self.pending) >= self.max_keys:
            return self._opened
        return self._opened + min(self.max_window, self.window * (1 + self.fetches))

    def take(self) -> set[Key]:
        """The gathered keys, now in flight (call when :meth:`due` has come)."""
        batch, self.pending = self.pending, set()
        self.in_flight |= batch
        self.fetches += 1
        return batch

    def finish(self, keys: Iterable[Key], served: Iterable[Key] = ()) -> None:
        """A fetch of ``keys`` ended; those not ``served`` wait for the next full tick."""
        keys = set(keys)
        self.in_flight -= keys
        self.fetches = max(0, self.fetches - 1)
        self.deferred |= keys - set(served)

    def tick_starting(self, demand: Iterable[Key] = ()) -> None:
        """A full tick is about to fetch ``demand``, every watched key: what was gathered goes
        with it, and none of it is gathered again while it runs."""
        self.deferred |= self.pending
        self.deferred.update(demand)
        self.pending.clear()

    def tick_done(self) -> None:
        """The full tick ended: keys still without data may be gathered again."""
        self.deferred.clear()

    def reset(self) -> None:
        """Leadership lost: forget everything (a successor gathers on its own)."""
        self.pending.clear()
        self.in_flight.clear()
        self.deferred.clear()
        self.fetches = 0
        self._last = -math.inf
