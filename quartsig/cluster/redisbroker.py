"""Many processes on many machines, one collector: the broker on Redis, put together.

The parts each do one thing: :mod:`~quartsig.cluster.redis` (names, scripts, the connection),
:mod:`~quartsig.cluster.election` (the fenced lease), :mod:`~quartsig.cluster.demand` (what every
node watches, what is new), :mod:`~quartsig.cluster.node` (the node's copy of the values),
:mod:`~quartsig.cluster.codec` (nothing read from Redis is trusted) and
:mod:`~quartsig.cluster.fingerprint` (who may join). This class wires them and answers the
:class:`~quartsig.cluster.broker.Broker` protocol.

When Redis is unreachable, nodes keep their connections and serve what they hold, tell clients
``degraded``, and nobody polls upstream (no lease can be renewed); when it returns, a leader is
elected again, nodes resync, and clients see ``ok`` again, with no restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import redis.asyncio as aioredis

from quartsig.cluster.broker import Handler, Loops
from quartsig.cluster.codec import Codec
from quartsig.cluster.demand import ADVERTISE_EVERY, DEMAND_TTL, Demand
from quartsig.cluster.election import Election
from quartsig.cluster.fingerprint import ClusterMismatch, differences
from quartsig.cluster.node import Replica
from quartsig.cluster.redis import (
    FAILURES,
    Store,
    connect,
    guarded,
    publish_args,
    stream_length,
)
from quartsig.config import Settings
from quartsig.domain.model import Batch, Key
from quartsig.domain.protocol import Vocabulary
from quartsig.ops.metrics import Metrics

log = logging.getLogger(__name__)

#: Approximate bytes the change stream may hold by default (``QUARTSIG_REDIS_STREAM_BYTES``).
STREAM_BYTES = 64 * 2**20
#: Milliseconds the ``nodes`` fingerprints outlive the last refresh.
NODES_TTL_MS = int(3 * DEMAND_TTL * 1000)


class RedisBroker:
    """A node of the cluster: both the candidate collector and the reader of changes."""

    def __init__(
        self,
        client: aioredis.Redis,
        handler: Handler,
        vocabulary: Vocabulary,
        *,
        prefix: str = "quartsig:",
        lease_ttl: float = 3.0,
        metrics: Metrics | None = None,
        node: str | None = None,
        identity: Mapping[str, str] | None = None,
        stream_bytes: int = STREAM_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler = handler
        self.metrics = metrics
        self.node = node or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        #: Fingerprints this node must share with the cluster (:mod:`.fingerprint`).
        self.identity = dict(identity or {})
        self.stream_bytes = stream_bytes
        self.codec = Codec(vocabulary, on_reject=self._count_rejected)
        self.store = Store(client, prefix, on_lost=self._lost)
        self.election = Election(self.store, self.node, lease_ttl=lease_ttl, metrics=metrics,
                                 on_elected=self._elected, clock=clock)
        self.cluster = Demand(self.store, self.codec, handler, self.election, clock=clock)
        self.replica = Replica(self.store, self.codec, handler, self.cluster, metrics)
        #: Bytes one stream entry takes, averaged over recent publications.
        self.entry_bytes = 0.0
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        #: How the loops are started: the app hands its supervisor's ``spawn``, which restarts
        #: a loop that dies (issue #20.1); plain tasks otherwise (tests, benchmarks).
        self.spawn: Callable[[str, Callable[[], Coroutine[Any, Any, None]]],
                            asyncio.Task[None]] = (
            lambda name, factory: asyncio.create_task(factory(), name=f"quartsig-{name}"))

    @classmethod
    def from_settings(cls, settings: Settings, handler: Handler, vocabulary: Vocabulary,
                      metrics: Metrics | None = None,
                      identity: Mapping[str, str] | None = None) -> RedisBroker:
        if not settings.redis_url:
            raise ValueError("the Redis broker needs QUARTSIG_REDIS_URL")
        return cls(connect(settings.redis_url), handler, vocabulary,
                   prefix=settings.redis_prefix, lease_ttl=settings.lease_ttl,
                   metrics=metrics, identity=identity, stream_bytes=settings.redis_stream_bytes)

    @property
    def term(self) -> int:
        return max(self.election.term, self.replica.term)

    @property
    def client(self) -> aioredis.Redis:
        """The connection, for other cluster-wide pieces on the same Redis and prefix."""
        return self.store.client

    @property
    def prefix(self) -> str:
        return self.store.prefix

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check this node belongs (when Redis answers: it need not be up), then run the
        loops. Raises :class:`~quartsig.cluster.fingerprint.ClusterMismatch` if it does not."""
        try:
            async with asyncio.timeout(5.0):
                await self._check_membership()
        except (*FAILURES, TimeoutError) as error:
            log.warning("Redis does not answer yet (%s): joining when it does", error)
        log.info("joining the cluster as %s", self.node)
        self._tasks = [self.spawn(name, loop) for name, loop in self.loops().items()]

    def loops(self) -> Loops:
        return {
            "lease": self.election.campaign,
            "changes": self.replica.follow,
            "demand": self.advertise,
            "newcomers": self.replica.newcomers,
            "wanted": self.cluster.listen,
        }

    async def stop(self) -> None:
        """Stop the loops (redis-py may turn a cancellation into a connection error, so each
        loop also looks at its flag), release the lease, close the connection."""
        self.stopping = self.election.stopping = True
        self.cluster.stopping = self.replica.stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        self._tasks = []
        await self.election.release()
        await self.store.client.aclose()

    # -- membership ---------------------------------------------------------------------------

    async def _check_membership(self) -> None:
        """Refuse to join a cluster whose token key, plugins or profiles differ; else say
        this node's fingerprints (every node refreshes them, so they expire with the last)."""
        if not self.identity:
            return
        name = self.store.names["nodes"]
        found: Any = await self.store.client.hgetall(name)
        theirs = {field.decode(errors="replace"): value.decode(errors="replace")
                  for field, value in (found or {}).items()}
        if theirs and (why := differences(self.identity, theirs)):
            raise ClusterMismatch(
                f"this node does not belong to the cluster at {self.store.prefix!r}: "
                + "; ".join(why))
        async with self.store.client.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping=dict[Any, Any](self.identity))
            pipe.pexpire(name, NODES_TTL_MS)
            await pipe.execute()

    async def advertise(self) -> None:
        """Refresh this node's demand and fingerprints every ``ADVERTISE_EVERY`` seconds."""
        while not self.stopping:
            await asyncio.sleep(ADVERTISE_EVERY)
            await guarded(self.store, self._refresh, 0.0, "advertising demand")

    async def _refresh(self) -> None:
        await self.cluster.advertise()
        self.replica.forget()
        try:
            await self._check_membership()
        except ClusterMismatch as error:  # found only now (Redis was away at start): never lead
            log.error("%s; this node stops collecting", error)
            self.election.stopping = True
            self.election.step_down("not a member of this cluster")

    # -- the collector's side ---------------------------------------------------------------

    def leading(self) -> bool:
        return self.election.leading()

    async def leadership(self) -> None:
        await self.election.leadership()

    async def demand(self) -> set[Key]:
        try:
            return await self.cluster.collect()
        except FAILURES as error:
            self.store.failed(error)
            self.election.step_down("Redis unreachable")
            return set()
        except Exception:  # a bug here must not end the collector: this node's keys still count
            log.exception("reading the cluster's demand failed")
            return self.handler.watched()

    async def wanted(self) -> set[Key]:
        return await self.cluster.wanted()

    def wanted_now(self) -> set[Key]:
        return self.cluster.wanted_now()

    async def publish(self, batch: Batch) -> bool:
        """Publish through the fencing script; False (and step down) if this node may not."""
        token = self.election.token
        if token is None or not self.leading():
            self._count_fenced()
            return False
        args = publish_args(batch, token, stream_length(self.entry_bytes, self.stream_bytes))
        try:
            seq = await self.store.publish(
                keys=self.store.keys("lease", "latest", "changes", "epoch", "seq", "status"),
                args=args)
        except FAILURES as error:
            self.store.failed(error)
            self.election.step_down("Redis unreachable while publishing")
            return False
        if not seq:
            self._count_fenced()
            self.election.step_down("fenced: the lease is another node's")
            return False
        self._measure(args)
        return True

    def _measure(self, args: list[bytes | str | int]) -> None:
        """Average bytes per stream entry (its batch; ``latest`` is bounded by the demand).
        ``args`` is :func:`publish_args`'s: three, then per chunk a count, the entry, values."""
        at = 3
        while at + 1 < len(args):
            count, entry = int(args[at]), args[at + 1]
            size = len(str(entry) if isinstance(entry, int) else entry) + 64  # id, seq, epoch
            self.entry_bytes = size if not self.entry_bytes else (
                0.8 * self.entry_bytes + 0.2 * size)
            at += 2 + 2 * count

    def _count_fenced(self) -> None:
        if self.metrics is not None:
            self.metrics.fenced.inc()

    def _count_rejected(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.redis_rejected.labels(what=what).inc()

    # -- the node's side ----------------------------------------------------------------------

    def _lost(self) -> None:
        self.replica.lost()

    async def _elected(self, epoch: bytes) -> None:
        if epoch != self.replica.epoch:
            await self.replica.resync()

    def cluster_keys(self) -> int:
        return self.cluster.cluster_keys

    def health(self) -> dict[str, object]:
        return {"role": "leader" if self.leading() else "follower", "term": self.term,
                "redis": "ok" if self.store.ok else "unreachable"}
