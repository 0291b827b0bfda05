"""A node's copy of the cluster's values: read the change stream, resync, welcome newcomers.

Each value carries the global ``seq`` it was written at; a node applies a value only if it is
newer than what it holds for that key, so values never go back, whichever way (stream, resync,
newcomer look-up) they arrive, and no value may claim a ``seq`` beyond the global counter. A gap
in the stream's ``seq`` (entries trimmed under a slow reader) or a new epoch (Redis lost its
data) makes the node resync the keys it holds from ``latest``; its hub diffs, so clients get only
what changed. Values enter the node through its :class:`~quartsig.cluster.broker.Handler`.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from quartsig.cluster.broker import Handler
from quartsig.cluster.codec import Codec, Untrusted, key_name, number
from quartsig.cluster.demand import Demand
from quartsig.cluster.redis import UNREACHABLE, Store, guarded
from quartsig.domain.model import Batch, Key
from quartsig.ops.logs import Sparse
from quartsig.ops.metrics import Metrics

log = logging.getLogger(__name__)

#: Stream entries read per round trip.
READ_COUNT = 100

Value = tuple[Key, dict[str, Any], int, int]  # key, data, ts, seq


class Replica:
    """This node's reader of the cluster's values."""

    def __init__(self, store: Store, codec: Codec, handler: Handler, demand: Demand,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.codec = codec
        self.handler = handler
        self.demand = demand
        self.metrics = metrics
        self.epoch: bytes | None = None
        #: The highest fencing term seen on the stream (a follower's health says it).
        self.term = 0
        self.stopping = False
        #: Per key, the ``seq`` of the value this node holds: nothing older is applied.
        self._seq: dict[Key, int] = {}
        self._last_seq = 0
        self._last_id = b"0-0"
        self._degraded = False
        self._failures = Sparse()

    def lost(self) -> None:
        """Redis stopped answering: clients hear ``degraded``; trust no position until resync."""
        self.epoch = None
        self._degraded = True
        self.handler.apply(Batch(status=("degraded", UNREACHABLE)))

    # -- the change stream --------------------------------------------------------------------

    async def follow(self) -> None:
        """Read changes and apply them, resyncing after a gap or a new epoch, for ever."""
        while not self.stopping:
            await guarded(self.store, self._follow_once, 0.5, "reading the change stream")

    async def _follow_once(self) -> None:
        if self.epoch is None:
            await self.resync()
        found = await self.store.read(self.store.names["changes"], self._last_id, READ_COUNT)
        for entry_id, fields in found:
            try:
                behind = self.entry(entry_id, fields)
            except Exception as error:  # a bug on one entry: skip it, or the reader would stall
                if (held := self._failures.due()) is not None:
                    log.exception("applying stream entry %r failed; skipped (%d more since "
                                  "the last report)", entry_id, held)
                self.codec.reject("stream entry", error)
                self._last_id = entry_id
                continue
            if behind:
                await self.resync()
                break

    def entry(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        """Apply one stream entry; True when the node must resync first. A bad entry is
        skipped without moving the ``seq`` on, so the leader's next entry still follows."""
        try:
            seq = number(fields.get(b"seq"), 1)
        except Untrusted as error:
            self.codec.reject("stream entry", error)
            self._last_id = entry_id
            return False
        if fields.get(b"epoch") != self.epoch or seq != self._last_seq + 1:
            return True  # Redis lost data, entries were trimmed, or a forged seq: resync
        try:
            batch = self.codec.batch(fields.get(b"batch"))
        except Untrusted as error:
            self.codec.reject("stream entry", error)
            self._last_id = entry_id
            return False
        self._last_id, self._last_seq = entry_id, seq
        self.term = max(self.term, batch.term)
        self.apply(batch, seq, entry_id)
        return False

    def apply(self, batch: Batch, seq: int, entry_id: bytes | None = None) -> None:
        """Hand ``batch`` to the handler with only the values newer than those held."""
        self._keep_newer(batch, [(key, data, ts, seq) for key, data, ts in batch.values])
        if self.metrics is not None and entry_id is not None:
            sent_ms = int(entry_id.split(b"-")[0])
            self.metrics.stream_delay.observe(max(0.0, time.time() - sent_ms / 1000))
        self.handler.apply(batch)

    def _keep_newer(self, batch: Batch, values: list[Value]) -> None:
        held = self.handler.held()
        batch.values = []
        for key, data, ts, seq in values:
            if key in held and self._seq.get(key, 0) < seq:  # only what this node holds
                self._seq[key] = seq
                batch.values.append((key, data, ts))

    # -- snapshots ----------------------------------------------------------------------------

    async def resync(self) -> None:
        """Take a consistent snapshot (stream position, epoch, values, status) and apply it."""
        keys = list(self.handler.held())
        names = self.store.names
        async with self.store.client.pipeline(transaction=True) as pipe:
            pipe.get(names["epoch"])
            pipe.get(names["seq"])
            pipe.xrevrange(names["changes"], count=1)
            pipe.get(names["status"])
            if keys:
                pipe.hmget(names["latest"], [key_name(key) for key in keys])
            epoch, seq, last, status, *found = await pipe.execute()
        self.store.answered()
        if epoch != self.epoch:
            self._seq.clear()
        self.epoch = epoch
        self._last_seq = self._ceiling(seq)
        self._last_id = last[0][0] if last else b"0-0"
        batch = Batch()
        self._keep_newer(batch, self._values(keys, found[0] if found else [], self._last_seq)[0])
        if status is not None:
            try:
                batch.status, batch.retry_at = self.codec.status(status)
            except Untrusted as error:
                self.codec.reject("status", error)
        if batch.status is None and self._degraded:
            batch.status = ("ok", "")
        self._degraded = False
        self.handler.apply(batch)
        await self.demand.advertise()

    def _ceiling(self, seq: object) -> int:
        try:
            return 0 if seq is None else number(seq)
        except Untrusted as error:
            self.codec.reject("seq", error)
            return 0

    def _values(self, keys: list[Key], found: list[Any],
                ceiling: int) -> tuple[list[Value], list[Key]]:
        """``latest``'s answers for ``keys``: the good values, and the keys without one."""
        values, missing = [], []
        for key, raw in zip(keys, found, strict=False):
            try:
                if raw is None:
                    raise KeyError(key)
                seq, data, ts = self.codec.value(raw, ceiling)
                values.append((key, data, ts, seq))
            except KeyError:
                missing.append(key)
            except Untrusted as error:
                self.codec.reject("latest value", error)
                missing.append(key)
        return values, missing

    async def newcomers(self) -> None:
        """Keys new to this node: from ``latest`` if anyone has them, else ask the leader."""
        while not self.stopping:
            keys = list(await self.handler.asked())
            if keys:
                await guarded(self.store, partial(self.welcome, keys), 0.0,
                              "looking up new keys")

    async def welcome(self, keys: list[Key]) -> None:
        names = self.store.names
        async with self.store.client.pipeline(transaction=True) as pipe:
            pipe.get(names["seq"])
            pipe.hmget(names["latest"], [key_name(key) for key in keys])
            seq, found = await pipe.execute()
        values, missing = self._values(keys, found, self._ceiling(seq))
        if values:
            batch = Batch()
            self._keep_newer(batch, values)
            self.handler.apply(batch)
        if missing:  # the next advertisement carries them anyway; the leader fetches them early
            await self.demand.ask(missing)

    def forget(self) -> None:
        """Drop the ``seq`` of keys this node no longer holds (it forgot their data)."""
        held = self.handler.held()
        for key in [key for key in self._seq if key not in held]:
            del self._seq[key]
