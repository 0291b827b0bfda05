"""A clock moved by hand, with timers: what a loop offers of time (``time``, ``call_at``,
``call_later``), so code that takes a loop clock runs in tests without sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class ManualTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Time stands still until :meth:`advance` moves it; timers due by then run, in order."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, ManualTimer, Callable[[], object]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object], /) -> ManualTimer:
        timer = ManualTimer()
        heapq.heappush(self._timers, (when, next(self._order), timer, callback))
        return timer

    def call_later(self, delay: float, callback: Callable[[], object], /) -> ManualTimer:
        return self.call_at(self.now + delay, callback)

    @property
    def pending(self) -> int:
        return sum(not timer.cancelled for _, _, timer, _ in self._timers)

    async def advance(self, seconds: float) -> None:
        """Move time by ``seconds``: to each timer as it falls due, running it and letting the
        loop's ready tasks run after it (a write a timer started finishes then), in order."""
        end = self.now + seconds
        await settle()
        while True:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if not self._timers or self._timers[0][0] > end:
                break
            when, _, _, callback = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            callback()
            await settle()
        self.now = end


async def settle(rounds: int = 5) -> None:
    """Let the loop run what is ready now (tasks just created, their callbacks)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class HandClock:
    """What code that takes ``clock=time.time`` (or ``time.monotonic``) calls: ``now``, which
    the test moves by hand (``clock.now += 5``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
