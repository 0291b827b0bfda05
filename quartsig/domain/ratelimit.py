"""The token bucket: the one rate limiter of quartsig.

A client's ops (``/ws``), the early fetches' scanner requests (``feed.budget.RequestBudget``)
and wrong bot secrets per address (``web.api.AuthFailures``) each draw from one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second on average, bursts of ``burst``; O(1), no task, no timer."""

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock()

    def level(self) -> float:
        """Tokens in the bucket now (a fraction while one is refilling)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self) -> bool:
        """One token if there is one."""
        if self.level() >= 1:
            self.tokens -= 1
            return True
        return False

    def available(self) -> int:
        """Whole tokens in the bucket now."""
        return int(self.level())

    def grant(self, wanted: int) -> int:
        """Take up to ``wanted`` whole tokens; how many were granted (maybe 0)."""
        granted = min(wanted, self.available())
        self.tokens -= granted
        return granted

    def drain(self) -> None:
        """Take one token, or what is left of one (a failure counts even when over budget)."""
        self.tokens = max(0.0, self.level() - 1)

    def wait(self) -> int | None:
        """Whole seconds until a token is there, or None if one is there now."""
        tokens = self.level()
        return None if tokens >= 1 else max(1, math.ceil((1 - tokens) / self.rate))
