"""What upstream may cost: the early-fetch budget, the per-account quota of new keys, and the
backoff of a throttled address.

Pure and clock-injected, like :mod:`quartsig.domain.ratelimit`: the collector and the ``/ws`` route
ask, these answer, and tests move time instead of sleeping.

- :class:`RequestBudget`: a token bucket of scanner requests that early fetches draw from. A
  key that finds it empty waits for the next full tick (which costs nothing extra: the tick
  fetches the whole demand anyway).
- :class:`KeyQuota`: distinct new keys (keys this node has no data for) one account may ask
  for per window: the first ones are fetched early, the next wait for the full tick, then they
  are refused. A made-up ticker is a new key every time, so this is what stops one account
  from turning subscriptions into upstream requests.
- :class:`Backoff`: consecutive throttled ticks push the next try back, exponentially, with
  jitter, honouring ``Retry-After``, capped; each step allows one probe request.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable


class RequestBudget:
    """``per_minute`` requests a minute on average, bursts of ``burst`` (default the same)."""

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(
        self,
        per_minute: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(per_minute if burst is None else burst)
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()

    def available(self) -> int:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return int(self.tokens)

    def grant(self, wanted: int) -> int:
        """Take up to ``wanted`` whole requests; how many were granted (maybe 0)."""
        granted = min(wanted, self.available())
        self.tokens -= granted
        return granted


class KeyQuota:
    """Distinct new keys per account per ``window`` seconds, in two tiers.

    The first ``early`` keys of a window are fetched early; the next ones, up to ``limit``, are
    accepted but wait for the next full tick (which fetches the whole demand in a few grouped
    requests, so they cost next to nothing upstream); beyond ``limit`` they are refused. Asking
    for a key again within the window gets the same answer and counts once.
    """

    EARLY = "early"
    TICK = "tick"
    REFUSE = "refuse"

    __slots__ = ("_seen", "clock", "early", "limit", "window")

    def __init__(
        self,
        limit: int,
        early: int | None = None,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.early = limit if early is None else min(early, limit)
        self.window = window
        self.clock = clock
        #: account -> key -> (when it was first asked for in this window, its verdict)
        self._seen: dict[Hashable, dict[Hashable, tuple[float, str]]] = {}

    def admit(self, account: Hashable, key: Hashable) -> str:
        """:attr:`EARLY`, :attr:`TICK` or :attr:`REFUSE` for ``account`` asking for ``key``."""
        now = self.clock()
        cutoff = now - self.window
        seen = self._seen.get(account)
        if seen is None:
            seen = self._seen[account] = {}
        else:
            known = seen.get(key)
            if known is not None and known[0] > cutoff:
                return known[1]
            if len(seen) >= self.early:
                for old in [k for k, (at, _) in seen.items() if at <= cutoff]:
                    del seen[old]
        counted = sum(1 for _, verdict in seen.values() if verdict != self.REFUSE)
        if counted < self.early:
            verdict = self.EARLY
        elif counted < self.limit:
            verdict = self.TICK
        else:
            return self.REFUSE
        seen[key] = (now, verdict)
        return verdict

    def prune(self) -> None:
        """Forget windows that have passed (accounts that stopped asking)."""
        cutoff = self.clock() - self.window
        for account in list(self._seen):
            seen = self._seen[account]
            for old in [k for k, (at, _) in seen.items() if at <= cutoff]:
                del seen[old]
            if not seen:
                del self._seen[account]

    def __len__(self) -> int:
        return len(self._seen)


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
