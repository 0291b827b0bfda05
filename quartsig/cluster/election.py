"""Who collects: one fenced lease in Redis, renewed while held, taken when vacant.

A grant hands out a fencing term that only rises (see :mod:`quartsig.cluster.redis`); the
token ``node:term`` must still hold the lease when a publication is written, so a leader that
was paused past its lease (GC, SIGSTOP, a VM stall) publishes nothing and steps down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from quartsig.cluster.redis import FAILURES, Store
from quartsig.ops.metrics import Metrics

log = logging.getLogger(__name__)


class Election:
    """This node's candidacy: campaigns, holds, renews and releases the lease."""

    def __init__(self, store: Store, node: str, *, lease_ttl: float = 3.0,
                 metrics: Metrics | None = None,
                 on_elected: Callable[[bytes], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.node = node
        self.lease_ttl = lease_ttl
        self.metrics = metrics
        #: Called with the data space's epoch before this node collects (to resync if new).
        self.on_elected = on_elected
        self.clock = clock
        #: Whether this node may lead now: not while its collector keeps failing (the app's
        #: supervisor says), so another node collects instead.
        self.eligible: Callable[[], bool] = lambda: True
        self.token: str | None = None
        self.term = 0
        #: Monotonic time until which the lease is surely ours (measured from before renewing).
        self._until = 0.0
        self._led = asyncio.Event()
        #: Set when a leader says it released the lease: try for it now, not at the next round.
        self.vacant = asyncio.Event()
        self.stopping = False

    def leading(self) -> bool:
        return self.token is not None and self.clock() < self._until

    async def leadership(self) -> None:
        while not self.leading():
            self._led.clear()
            await self._led.wait()

    async def campaign(self) -> None:
        """Try for the lease while nobody holds it; renew it at a third of its TTL while held."""
        while not self.stopping:
            try:
                await self.round()
            except FAILURES as error:
                self.store.failed(error)
                self.step_down("Redis unreachable")
            except Exception:  # a bug must not end the campaign: nobody would lead again
                log.exception("lease campaign failed")
                self.step_down("internal error")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_ttl / 3):
                    await self.vacant.wait()
            self.vacant.clear()

    async def round(self) -> None:
        ttl_ms = int(self.lease_ttl * 1000)
        sent = self.clock()
        if not self.eligible():
            self.step_down("this node's collector keeps failing")
            return
        if self.token is not None:
            if await self.store.renew(keys=self.store.keys("lease"), args=[self.token, ttl_ms]):
                self._until = sent + self.lease_ttl
            else:
                self.step_down("lease lost")
            return
        granted = await self.store.acquire(
            keys=self.store.keys("lease", "term", "epoch"),
            args=[self.node, ttl_ms, int(time.time() * 1000), uuid.uuid4().hex],
        )
        self.store.answered()
        if not granted:
            return
        token, term, epoch = (part.decode() if isinstance(part, bytes) else str(part)
                              for part in granted)
        self.token, self.term = token, int(term)
        self._until = sent + self.lease_ttl
        log.info("leading the cluster as %s (term %d)", self.node, self.term)
        if self.metrics is not None:
            self.metrics.lease.set(1)
            self.metrics.term.set(self.term)
        if self.on_elected is not None:
            await self.on_elected(epoch.encode())
        self._led.set()

    def step_down(self, why: str) -> None:
        if self.token is None:
            return
        log.info("stepping down as leader (term %d): %s", self.term, why)
        self.token = None
        self._until = 0.0
        if self.metrics is not None:
            self.metrics.lease.set(0)

    async def release(self) -> None:
        """Give the lease up now and say so on the stream every node reads: a successor leads
        at once instead of waiting out the TTL."""
        if self.token is not None:
            with contextlib.suppress(*FAILURES, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.store.release(keys=self.store.keys("lease", "wanted"),
                                             args=[self.token])
            self.step_down("stopping")
