"""A bounded map whose entries expire: the one TTL cache the app uses.

Two caches needed it (accounts admitted lately, symbols TradingView said it does not have) and
had grown as two near-identical classes; the clock is injected so that tests move time instead
of sleeping or patching ``time.monotonic``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Expiring(Generic[K, V]):
    """``key -> value`` for ``ttl`` seconds each; past ``limit`` entries the oldest go first."""

    __slots__ = ("_items", "clock", "limit", "ttl")

    def __init__(
        self, ttl: float, limit: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self.clock = clock
        self._items: dict[K, tuple[float, V]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def add(self, key: K, value: V) -> None:
        self._items.pop(key, None)  # re-inserted last: insertion order is age order
        if len(self._items) >= self.limit:
            self._items.pop(next(iter(self._items)))
        self._items[key] = (self.clock() + self.ttl, value)

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] < self.clock():
            del self._items[key]
            return None
        return item[1]

    def keys(self) -> list[K]:
        """The keys not yet expired (expired ones are dropped on the way)."""
        now = self.clock()
        for key in [key for key, (until, _) in self._items.items() if until < now]:
            del self._items[key]
        return list(self._items)

    def forget(self, keys: Iterable[K]) -> None:
        for key in keys:
            self._items.pop(key, None)
