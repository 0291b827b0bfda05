"""One account's fair share of what every account shares: upstream requests and watched keys.

Two budgets are shared by everyone: the scanner requests that early fetches make (one address,
throttled by TradingView) and ``QUARTSIG_MAX_KEYS``, the keys the one collector fetches. Capping
each account's *keys* per minute is not enough: an account sending one made-up ticker at a time
turns every key into a request of its own (a churn of two sockets made 31 requests in 20 s where a
user opening a board makes 1), and 20 sockets x 128 subscriptions let 8 accounts fill the
cluster's 20 000 keys. So:

- :class:`EarlyShare`: early-fetch *requests* per account, a token bucket each. Keys one account
  asks for in one step of the event loop (one frame, or frames read together) go upstream
  together in one early fetch, one request per screener and profile, so the first key of each
  (screener, profile) group in a step takes a token and the others ride along. Out of tokens, the
  key waits for the next full tick (which fetches the whole demand in a few grouped requests).
- :class:`KeyShare`: distinct keys one account holds over all its sockets (and, in a cluster,
  what other nodes say it holds there); one more is refused (``account_key_limit``).

Pure and clock-injected, like :mod:`quartsig.domain.ratelimit`: the ``/ws`` route asks, these
answer; cluster-wide counts are :mod:`quartsig.cluster.quota`'s business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable, Mapping
from typing import Generic, TypeVar

from quartsig.domain.ratelimit import TokenBucket

Sink = TypeVar("Sink")


class EarlyShare:
    """``per_minute`` early fetches (requests) per account on average, bursts of ``burst``.

    ``later`` schedules :meth:`settle` for the end of the current step (the app passes the event
    loop's ``call_soon``); without it the caller settles."""

    def __init__(
        self,
        per_minute: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        later: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(per_minute if burst is None else burst)
        self.clock = clock
        self.later = later
        self._buckets: dict[Hashable, TokenBucket] = {}
        #: account -> the (screener, profile) groups that took a token in this step.
        self._open: dict[Hashable, set[Hashable]] = {}

    def admit(self, account: Hashable, group: Hashable) -> bool:
        """Whether ``account``'s new key of ``group`` may be fetched early (takes a token for
        the first key of a group in a step)."""
        groups = self._open.get(account)
        if groups is not None and group in groups:
            return True
        bucket = self._buckets.get(account)
        if bucket is None:
            bucket = self._buckets[account] = TokenBucket(self.rate, self.burst, self.clock)
        if not bucket.take():
            return False
        if not self._open and self.later is not None:
            self.later(self.settle)
        self._open.setdefault(account, set()).add(group)
        return True

    def settle(self) -> None:
        """The step ended: its keys have gone to the collector together."""
        self._open.clear()

    def prune(self) -> None:
        """Forget accounts whose bucket has refilled (it would start full anyway)."""
        now = self.clock()
        for account, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst:
                del self._buckets[account]

    def __len__(self) -> int:
        return len(self._buckets)


class KeyShare(Generic[Sink]):
    """Distinct keys one account may hold over all its sockets (``limit``; 0: no cap)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sinks: dict[Hashable, set[Sink]] = {}

    def join(self, account: Hashable, sink: Sink) -> None:
        self._sinks.setdefault(account, set()).add(sink)

    def leave(self, account: Hashable, sink: Sink) -> None:
        sinks = self._sinks.get(account)
        if sinks is not None:
            sinks.discard(sink)
            if not sinks:
                del self._sinks[account]

    def allows(
        self, account: Hashable, key: Hashable, held: Mapping[Sink, Collection[Hashable]],
        elsewhere: int = 0,
    ) -> bool:
        """Whether ``account`` may subscribe to ``key``, given what each socket ``held`` (and
        how many keys it holds ``elsewhere``: other nodes): a key it holds already is free; a new
        one must fit under the limit."""
        if not self.limit:
            return True
        sets = [held.get(sink, ()) for sink in self._sinks.get(account, ())]
        if any(key in keys for keys in sets):
            return True
        room = self.limit - elsewhere
        if sum(len(keys) for keys in sets) < room:  # cheap: most accounts stop here
            return True
        return len(set().union(*sets)) < room

    def held(self, account: Hashable, held: Mapping[Sink, Collection[Hashable]]) -> int:
        """Distinct keys ``account`` holds now."""
        return len(set().union(*(held.get(sink, ()) for sink in self._sinks.get(account, ()))))

    def __len__(self) -> int:
        return len(self._sinks)
