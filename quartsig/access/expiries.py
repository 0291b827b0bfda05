"""When each live session's token runs out: one heap for every connection, no task each.

A token is checked at the handshake, but a connection can outlive it by days; so every
connection is entered here with its token's expiry, and one loop (``State.watch_sessions``)
asks :meth:`Expiries.due` once a second and closes what it returns with 4401.

A connection that goes away first is only dropped from the map; its heap entry stays until it
surfaces or until stale entries outnumber live ones, when the heap is rebuilt from the map. So
the heap never holds more than about twice the open connections, and a connection that left is
never returned.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")

#: Stale heap entries tolerated before a rebuild, whatever the number of live ones.
_SLACK = 64


class Expiries(Generic[T]):
    """``session -> expiry``; :meth:`due` hands over, once, every session past its expiry."""

    __slots__ = ("_expiry", "_heap", "_order")

    def __init__(self) -> None:
        self._expiry: dict[T, float] = {}
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, session: T, expires_at: float) -> None:
        self._expiry[session] = expires_at
        heapq.heappush(self._heap, (expires_at, next(self._order), session))

    def remove(self, session: T) -> None:
        if self._expiry.pop(session, None) is None:
            return
        if len(self._heap) > 2 * len(self._expiry) + _SLACK:
            self._heap = [(when, next(self._order), s) for s, when in self._expiry.items()]
            heapq.heapify(self._heap)

    def due(self, now: float) -> list[T]:
        """Sessions whose expiry is before ``now``, each forgotten as it is returned."""
        heap, expiry = self._heap, self._expiry
        found = []
        while heap and heap[0][0] < now:
            when, _, session = heapq.heappop(heap)
            if expiry.get(session) == when:
                del expiry[session]
                found.append(session)
        return found

    @property
    def entries(self) -> int:
        """Heap entries, stale ones included (for tests of the bound)."""
        return len(self._heap)
