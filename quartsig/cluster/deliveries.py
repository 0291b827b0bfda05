"""The delivery stream: trigger ids announced to every node's delivery worker, in memory or in
Redis, behind one shape (:class:`quartsig.alerts.announcements.Announcements`, which this
module satisfies without importing it: ``alerts`` and ``cluster`` are sibling layers and the
app wires them).

In Redis it is ``{prefix}deliveries``, a stream of entries ``trigger <id>`` read by a
consumer group per set of channel kinds (:func:`group_for`: ``deliverers:telegram,webhook``;
each node a consumer named by its node id): ``XREADGROUP`` gives each entry to one node of
each group, so a node that cannot send a kind (``quartsig collect`` has no bot) never takes
the only look at a trigger that a node with the bot should send. The node acknowledges an
entry (``XACK``) once the deliveries it announces are claimed and marked in the database.
An entry left pending by a node that died is taken by another with ``XAUTOCLAIM`` once idle
longer than the claim lease, when the database row the dead node claimed is due again. The
stream is capped (``MAXLEN ~``): an entry trimmed before it was read costs only the time until
the deliverers' database poll.

Nothing read is trusted (as :mod:`quartsig.cluster.codec` has it for the change stream): an
entry that is not one positive trigger id is skipped, counted in
``quartsig_redis_rejected_total{what="delivery entry"}``, logged once, and acknowledged so
that it does not come back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from quartsig.cluster.codec import Untrusted, number

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

STREAM = "deliveries"
GROUP = "deliverers"
#: Entries the stream keeps (about: ``MAXLEN ~``); far more than a burst is.
MAXLEN = 10_000
#: Entries one read returns at most.
COUNT = 100
REJECTED = "delivery entry"
#: Milliseconds after which a consumer with nothing pending is dropped from the group: every
#: process start is a new consumer name, and the group's list would only grow.
FORGET = 86_400_000


def group_for(kinds: Iterable[str]) -> str:
    """The consumer group of the nodes that send these channel kinds. Groups overlap (a
    webhook row is the business of both ``webhook`` and ``telegram,webhook``): the database
    claim lets only one of them send it."""
    return f"{GROUP}:{','.join(sorted(set(kinds)))}"


def default_consumer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def trigger_of(fields: object) -> int:
    """The trigger id of one entry's fields, or :class:`Untrusted`."""
    if not isinstance(fields, dict) or len(fields) != 1:
        raise Untrusted("not one field")
    value = fields.get(b"trigger")
    if value is None:
        raise Untrusted("no trigger field")
    return number(value, low=1)


class MemoryDeliveries:
    """One process's stream with a consumer group's semantics (pending entries, taken over
    when idle past ``idle`` seconds), for tests; the clock is injected."""

    def __init__(self, consumer: str = "memory", *, idle: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 shared: MemoryDeliveries | None = None) -> None:
        self.consumer = consumer
        self.idle = idle
        self.clock = clock
        #: Several consumers of one group share the first one's entries.
        self._root: MemoryDeliveries = shared._root if shared is not None else self
        if shared is None:
            self.entries: deque[tuple[bytes, object]] = deque()
            self.pending: dict[bytes, tuple[str, float, object]] = {}
            self.added = asyncio.Event()
            self._next = 0

    def add(self, fields: object) -> bytes:
        """Append one entry as it is (tests add malformed ones)."""
        root = self._root
        root._next += 1
        entry = f"{root._next}-0".encode()
        root.entries.append((entry, fields))
        root.added.set()
        return entry

    async def announce(self, triggers: Sequence[int]) -> None:
        for trigger in triggers:
            self.add({b"trigger": str(trigger).encode()})

    async def read(self, block: float) -> list[tuple[bytes, int]]:
        root = self._root
        now = self.clock()
        got: list[tuple[bytes, object]] = []
        for entry, (_, since, fields) in list(root.pending.items()):
            if now - since >= self.idle:  # its own too, after a restart of its task
                got.append((entry, fields))
        if not got and not root.entries and block > 0:
            root.added.clear()
            try:
                async with asyncio.timeout(block):
                    await root.added.wait()
            except TimeoutError:
                return []
        while root.entries and len(got) < COUNT:
            got.append(root.entries.popleft())
        out: list[tuple[bytes, int]] = []
        for entry, fields in got:
            root.pending[entry] = (self.consumer, self.clock(), fields)
            try:
                out.append((entry, trigger_of(fields)))
            except Untrusted:
                root.pending.pop(entry, None)
        return out

    async def ack(self, entries: Sequence[bytes]) -> None:
        for entry in entries:
            self._root.pending.pop(entry, None)

    async def close(self) -> None:
        return None


class RedisDeliveries:
    """The stream and its consumer group in the cluster's Redis, under ``prefix``."""

    def __init__(self, client: Redis, prefix: str, *, consumer: str | None = None,
                 group: str = GROUP, idle: float = 60.0, maxlen: int = MAXLEN,
                 on_reject: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, forget: int = FORGET) -> None:
        self.client = client
        self.stream = f"{prefix}{STREAM}"
        self.group = group
        self.consumer = consumer or default_consumer()
        #: Milliseconds an entry stays pending on a consumer before another takes it: the
        #: claim lease and a margin, so the database row the dead node claimed is due again.
        self.min_idle = int(idle * 1000) + max(1_000, int(idle * 100))
        self.maxlen = maxlen
        self.on_reject = on_reject
        self.clock = clock
        self.forget = forget
        self._grouped = False
        self._swept = float("-inf")
        self._logged: set[str] = set()
        self.rejected = 0

    @classmethod
    def from_url(cls, url: str, prefix: str, **options: Any) -> RedisDeliveries:
        from quartsig.cluster.redis import connect

        return cls(connect(url), prefix, **options)

    async def _ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists: on the first read, and again
        after Redis lost its data. From ``0``: entries written before the group are read."""
        from redis.exceptions import ResponseError

        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._grouped = True

    async def announce(self, triggers: Sequence[int]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for trigger in triggers:
                pipe.xadd(self.stream, {"trigger": str(int(trigger))}, maxlen=self.maxlen,
                          approximate=True)
            await pipe.execute()

    async def read(self, block: float) -> list[tuple[bytes, int]]:
        from redis.exceptions import ResponseError

        if not self._grouped:
            await self._ensure_group()
        try:
            return await self._read(block)
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            self._grouped = False  # Redis came back empty: the group is made again
            return []

    async def _read(self, block: float) -> list[tuple[bytes, int]]:
        found: list[tuple[bytes, object]] = []
        now = self.clock()
        if now - self._swept >= self.min_idle / 2000:  # a dead node's pending entries
            self._swept = now
            claimed: Any = await self.client.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=self.min_idle,
                start_id="0-0", count=COUNT)
            found += [(entry, fields) for entry, fields in claimed[1] if entry is not None]
            await self._forget_idle()
        if not found:
            answer: Any = await self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=COUNT,
                block=max(1, int(block * 1000)))
            found += [(entry, fields) for _, batch in answer or () for entry, fields in batch]
        good: list[tuple[bytes, int]] = []
        bad: list[bytes] = []
        for entry, fields in found:
            try:
                good.append((bytes(entry), trigger_of(fields)))
            except Untrusted as error:
                self._reject(error)
                bad.append(bytes(entry))
        if bad:
            await self.ack(bad)
        return good

    async def _forget_idle(self) -> None:
        """Drop the consumers (dead processes) idle past ``forget`` with nothing pending."""
        consumers: Any = await self.client.xinfo_consumers(self.stream, self.group)
        for consumer in consumers:
            name = consumer.get("name")
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            if (name != self.consumer and not consumer.get("pending")
                    and int(consumer.get("idle") or 0) > self.forget):
                await self.client.xgroup_delconsumer(self.stream, self.group, name)

    def _reject(self, error: Exception) -> None:
        self.rejected += 1
        if self.on_reject is not None:
            self.on_reject(REJECTED)
        if REJECTED not in self._logged:
            self._logged.add(REJECTED)
            log.warning("skipped a bad %s read from Redis: %s (further ones are only counted "
                        "in quartsig_redis_rejected_total)", REJECTED, error)

    async def ack(self, entries: Sequence[bytes]) -> None:
        if entries:
            await self.client.xack(self.stream, self.group, *entries)

    async def close(self) -> None:
        await self.client.aclose()
