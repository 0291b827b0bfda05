"""What upstream may cost: the early-fetch budget and the backoff of a throttled address (the
per-account quota of new keys is decided with every other admission, in
:mod:`quartsig.access.admission`).

Pure and clock-injected, like :mod:`quartsig.domain.ratelimit`: the collector and the ``/ws`` route
ask, these answer, and tests move time instead of sleeping.

- :class:`RequestBudget`: a token bucket of scanner requests that early fetches draw from. A
  key that finds it empty waits for the next full tick (which costs nothing extra: the tick
  fetches the whole demand anyway).
- :class:`Backoff`: consecutive throttled ticks push the next try back, exponentially, with
  jitter, honouring ``Retry-After``, capped; each step allows one probe request.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from quartsig.domain.ratelimit import TokenBucket


class RequestBudget(TokenBucket):
    """``per_minute`` requests a minute on average, bursts of ``burst`` (default the same)."""

    __slots__ = ()

    def __init__(
        self,
        per_minute: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(per_minute / 60.0, float(per_minute if burst is None else burst), clock)




class Backoff:
    """Consecutive throttled attempts -> when the next one may go.

    Step ``n`` (1-based) waits ``base * 2**(n-1)`` capped at ``cap``, with equal jitter (half
    fixed, half random, so two steps are never closer than half the delay), and at least what
    ``Retry-After`` asked for (capped too: a server asking for a day gets ``cap``).
    """

    __slots__ = ("base", "cap", "clock", "rng", "steps", "until")

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.cap = max(cap, base)
        self.clock = clock
        self.rng = rng or random.Random()
        self.steps = 0
        self.until = 0.0

    def active(self) -> bool:
        """Throttled lately: the next attempt is a single probe, not a whole tick."""
        return self.steps > 0

    def wait(self) -> float:
        """Seconds until an attempt may go (0: now)."""
        return max(0.0, self.until - self.clock())

    def failed(self, retry_after: float | None = None) -> float:
        """One more throttled attempt; returns the instant (``clock``) of the next try."""
        self.steps += 1
        delay = min(self.cap, self.base * 2 ** min(self.steps - 1, 30))
        delay = delay / 2 + self.rng.uniform(0.0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        self.until = self.clock() + delay
        return self.until

    def succeeded(self) -> None:
        self.steps = 0
        self.until = 0.0
