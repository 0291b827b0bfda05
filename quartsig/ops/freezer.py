"""Keep what connections hold out of the cycle collector's full passes (issue 23).

Every open connection keeps ~190 tracked objects (the server stack's suspended coroutines,
their tasks, futures and queues; 7 of them quartsig's): at 10 000 connections a full
collection walks ~1.9 million objects, 0.8-2.9 s, and while clients connect CPython runs one
each time a quarter more has survived since the last (28-31 of them while 10 000 connect).
Freezing the start-up alone left all of that to walk.

:class:`Freezer` moves what survives into the permanent generation as it settles: every
``period`` seconds one young collection (gen0 and gen1 only: milliseconds), then
``gc.freeze()``. A full collection then walks only what survived since the last step, never
the connections already open. What is frozen and dies by its reference count is freed as
before; what dies in a cycle (a closed connection's coroutines, a task and its future) is
not, until a *thaw*: ``gc.unfreeze()``, one full collection of everything, ``gc.freeze()``
again. That one walks everything, so it runs only

- when the connections closed since the last thaw reach ``share`` of those open now, and
  either ``floor`` of them or no more closed since the last step (a burst settled): so that
  the garbage kept frozen is at most a fixed share of what is alive, as CPython's own rule
  keeps it for its oldest generation, none is kept once closes stop, and a server whose
  clients stay connected never pays it; or when ``every`` seconds have passed since the last
  thaw (garbage in cycles not made by connections: requests, failures);
- and only at a quiet moment (``quiet()``: a tick was just published, the next is most of an
  interval away), never during a fan-out.

The clock, the counts and the quiet moment are injected (the tests drive them by hand); the
server counts connections as Hypercorn's TCP sockets
(:func:`quartsig.hosting.sockets.count_sockets`).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Freezer"]


@dataclass
class Freezer:
    #: How many connections have closed so far (a count that only grows) and are open now.
    closed: Callable[[], int]
    open: Callable[[], int]
    #: Whether a thaw may run now (no fan-out under way or due soon).
    quiet: Callable[[], bool] = lambda: True
    #: Seconds between two steps (the :meth:`run` loop's sleep).
    period: float = 1.0
    #: A thaw is due once this share of the connections open have closed since the last...
    share: float = 0.25
    #: ...but not for fewer closed connections than this...
    floor: int = 64
    #: ...or once this many seconds have passed since the last thaw (0: never by time).
    every: float = 3600.0
    clock: Callable[[], float] = time.monotonic
    #: How many thaws and freezes so far (for tests and metrics).
    thaws: int = 0
    freezes: int = 0
    _closed_at_thaw: int = field(default=0, init=False)
    _thawed_at: float = field(default=0.0, init=False)
    _closed_seen: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._closed_at_thaw = self._closed_seen = self.closed()
        self._thawed_at = self.clock()

    def due(self) -> bool:
        """Whether the garbage frozen since the last thaw may be worth a full collection."""
        now = self.closed()
        closed, settled = now - self._closed_at_thaw, now == self._closed_seen
        self._closed_seen = now
        if closed and closed >= self.share * self.open() and (closed >= self.floor or settled):
            return True
        return bool(self.every) and self.clock() - self._thawed_at >= self.every

    def step(self) -> bool:
        """Thaw (if due and quiet) or freeze what survived since the last step; whether it
        thawed."""
        if self.due() and self.quiet():
            self._closed_at_thaw = self.closed()
            self._thawed_at = self.clock()
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.thaws += 1
            return True
        gc.collect(1)  # the young generations only: what is frozen next is what survived
        gc.freeze()
        self.freezes += 1
        return False

    async def run(self) -> None:
        """Step every ``period`` seconds, until cancelled (a server's lifespan task)."""
        while True:
            await asyncio.sleep(self.period)
            self.step()

