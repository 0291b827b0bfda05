"""The loop clock: the time the collector reads and the sleep its loop waits with, together.

A test that injects only a time function moves what the collector *reads*, while its loop still
waits in real ``asyncio.sleep``; the two then drift, and timing tests turn into races against
the machine's speed. Handing the loop one object for both lets a test move time and see the
loop wake exactly when that time says (:class:`ManualClock`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LoopClock:
    """Monotonic seconds, wall seconds, and the sleep that waits on the former."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(eq=False, slots=True)
class ManualClock:
    """A clock that moves only when told (:meth:`advance`); its sleeps end when it has moved
    far enough, so a loop driven by it runs step by step, whatever the machine's speed."""

    now: float = 1000.0
    epoch: float = 1_700_000_000.0  # wall time at ``now`` = 0
    _moved: asyncio.Condition = field(default_factory=asyncio.Condition)
    #: How many sleeps are waiting right now (a test waits for the loop to be asleep).
    sleeping: int = 0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.epoch + self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + max(0.0, seconds)
        async with self._moved:
            self.sleeping += 1
            try:
                await self._moved.wait_for(lambda: self.now >= until)
            finally:
                self.sleeping -= 1

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` and wake the sleeps that are due."""
        async with self._moved:
            self.now += seconds
            self._moved.notify_all()

    def loop_clock(self) -> LoopClock:
        return LoopClock(self.monotonic, self.wall, self.sleep)
