"""Many processes on many machines, one collector: the broker on Redis.

What lives in Redis (every name under ``QUARTSIG_REDIS_PREFIX``):

- ``lease``: ``node:term`` while a node collects, ``SET NX PX``; renewed at a third of its TTL
  by compare-and-set, released by compare-and-delete on a graceful stop.
- ``term``: the fencing counter. Each grant takes ``max(INCR, now in ms)``, so terms keep rising
  even when Redis comes back empty (no persistence): a wipe cannot hand out an old term again.
- ``epoch``: a random id made when the data space is new. A node that sees it change knows Redis
  lost its data (restart, eviction) and resyncs instead of trusting its stream position.
- ``latest``: one hash, ``profile|symbol|tf`` -> ``{data, ts, seq}``: what a newcomer on any node
  gets at once. One hash rather than one per key, so a node resolves all of a newcomer's keys
  (or all of its own after a gap) in one ``HMGET``.
- ``changes``: a stream of published batches (``XADD MAXLEN ~``), chunked, each entry numbered
  by ``seq``; every node reads it from its last id and applies it to its own hub, so the
  encode-once fan-out stays local. A gap in ``seq`` (entries trimmed under it) or a new epoch
  makes the node resync its keys from ``latest``: the hub diffs, so clients get only changes.
- ``status``: the last upstream status published, restored on resync.
- ``demand``: a sorted set of keys scored by expiry (Redis's clock): each node refreshes its
  keys every ``ADVERTISE_EVERY`` seconds, so a dead node's keys leave within ``DEMAND_TTL``.
- ``wanted``: a stream of keys new to the whole cluster; the leader blocks on it and fetches
  them early, so first data on a follower comes as fast as on the leader.

Every publication is one Lua script that checks the lease token before it writes anything
(Kleppmann's fencing token, with Redis as the storage that checks it): a leader that was paused
past its lease (GC, SIGSTOP, a VM stall) and wakes with an old reply in hand publishes nothing,
and steps down. Each value also carries the global ``seq`` it was written at; a node applies a
value only if it is newer than what it holds for that key, so values never go back, whichever
way (stream, resync, newcomer look-up) they arrive.

When Redis is unreachable, nodes keep their connections and serve what they hold, tell clients
``degraded``, and nobody polls upstream (no lease can be renewed); when it returns, a leader is
elected again, nodes resync, and clients see ``ok`` again, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from quartsig.cluster.broker import Deliver
from quartsig.domain.model import Batch, Key
from quartsig.fanout.hub import Hub
from quartsig.ops.logs import Sparse

log = logging.getLogger(__name__)

#: Seconds between a node's refreshes of its demand, and how long a refresh lasts.
ADVERTISE_EVERY = 2.0
DEMAND_TTL = 10.0
#: Values per stream entry, and entries the stream keeps (``MAXLEN ~``); a reader further
#: behind than that resyncs from ``latest``.
CHUNK = 200
STREAM_LENGTH = 2_000
#: Milliseconds a blocking read waits before it looks around again.
BLOCK_MS = 1_000
UNREACHABLE = "cluster store (Redis) unreachable"

_ACQUIRE = """
-- KEYS: lease, term, epoch; ARGV: node, ttl_ms, now_ms, new_epoch
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local term = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if term < floor then
  redis.call('SET', KEYS[2], ARGV[3])
  term = floor
end
local token = ARGV[1] .. ':' .. string.format('%d', term)
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[4], 'NX')
return {token, string.format('%d', term), redis.call('GET', KEYS[3])}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
-- KEYS: lease, wanted; ARGV: token. Tells the others on the stream they block on.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, '*', 'released', ARGV[1])
  return 1
end
return 0
"""

_PUBLISH = """
-- KEYS: lease, latest, changes, epoch, seq, status
-- ARGV: token, maxlen, status or '', then per chunk: count, entry, count x (field, value)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local epoch = redis.call('GET', KEYS[4])
if not epoch then return 0 end
if ARGV[3] ~= '' then redis.call('SET', KEYS[6], ARGV[3]) end
local i = 4
local last = 0
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  local entry = ARGV[i + 1]
  local seq = redis.call('INCR', KEYS[5])
  for j = 1, count do
    local at = i + 2 * j
    redis.call('HSET', KEYS[2], ARGV[at], string.format('%d', seq) .. ' ' .. ARGV[at + 1])
  end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*',
             'seq', string.format('%d', seq), 'epoch', epoch, 'batch', entry)
  last = seq
  i = i + 2 + 2 * count
end
return last
"""

_ADVERTISE = """
-- KEYS: demand; ARGV: ttl_ms, members...; returns how many keys the cluster watches now
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local until_ms = now_ms + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'GT', until_ms, ARGV[i]) end
return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf')
"""

_DEMAND = """
-- KEYS: demand; drops expired members, returns the rest
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def key_name(key: Key) -> str:
    return f"{key.profile}|{key.symbol}|{key.tf}"


def parse_key(name: bytes | str) -> Key:
    text = name.decode() if isinstance(name, bytes) else name
    profile, symbol, tf = text.split("|")
    return Key(profile, symbol, tf)


def encode_entry(batch: Batch, values: list[tuple[Key, dict[str, Any], int]],
                 last: bool) -> bytes:
    """One stream entry: a chunk of ``batch``'s values, its rejections and status on the last."""
    return orjson.dumps({
        "term": batch.term,
        "values": [[key_name(key), data, ts] for key, data, ts in values],
        "rejected": [[key_name(key), code, message] for key, code, message in batch.rejected]
        if last else [],
        "failed": [[key_name(key), code, message] for key, code, message in batch.failed]
        if last else [],
        "deferred": [[key_name(key), message, at] for key, message, at in batch.deferred]
        if last else [],
        "status": list(batch.status) if last and batch.status is not None else None,
        "retry_at": batch.retry_at if last else None,
    })


def decode_entry(raw: bytes) -> Batch:
    body = orjson.loads(raw)
    status = body["status"]
    return Batch(
        values=[(parse_key(name), data, ts) for name, data, ts in body["values"]],
        rejected=[(parse_key(name), code, message) for name, code, message in body["rejected"]],
        failed=[(parse_key(name), code, message) for name, code, message in body["failed"]],
        deferred=[(parse_key(name), message, at) for name, message, at in body["deferred"]],
        retry_at=body["retry_at"],
        status=(status[0], status[1]) if status is not None else None,
        term=body["term"],
    )


def publish_args(batch: Batch, token: str) -> list[bytes | str | int]:
    """The publish script's ARGV: the token, then chunks of at most ``CHUNK`` values."""
    status = (orjson.dumps([*batch.status, batch.retry_at]) if batch.status is not None
              else b"")
    args: list[bytes | str | int] = [token, STREAM_LENGTH, status]
    chunks = [batch.values[i:i + CHUNK] for i in range(0, len(batch.values), CHUNK)] or [[]]
    for number, chunk in enumerate(chunks):
        args += [len(chunk), encode_entry(batch, chunk, last=number == len(chunks) - 1)]
        for key, data, ts in chunk:
            args += [key_name(key), orjson.dumps([data, ts])]
    return args


class RedisBroker:
    """A node of the cluster: both the candidate collector and the reader of changes."""

    def __init__(
        self,
        client: aioredis.Redis,
        hub: Hub,
        deliver: Deliver,
        *,
        prefix: str = "quartsig:",
        lease_ttl: float = 3.0,
        metrics: Any = None,
        node: str | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.client = client
        self.hub = hub
        self.deliver = deliver
        self.lease_ttl = lease_ttl
        self.metrics = metrics
        self.node = node or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self.keys = {name: f"{prefix}{name}" for name in (
            "lease", "term", "epoch", "latest", "changes", "seq", "status", "demand", "wanted")}
        self.role = "follower"
        self.term = 0
        self.redis_ok = True
        self.token: str | None = None
        self.epoch: bytes | None = None
        #: Monotonic time until which the lease is surely ours (measured from before renewing).
        self._lease_until = 0.0
        self._led = asyncio.Event()
        #: Set when a leader says it released the lease: try for it now, not at the next round.
        self._vacant = asyncio.Event()
        #: Per key, the ``seq`` of the value this node holds: nothing older is applied.
        self._seq: dict[Key, int] = {}
        self._last_seq = 0
        self._last_id = b"0-0"
        self._wanted: set[Key] = set()
        self._wanted_event = asyncio.Event()
        self._wanted_id = b"0-0"
        self._demanded: set[Key] = set()
        #: The cluster's distinct keys at the last advertisement (this node's or a newcomer's).
        self._cluster_keys = 0
        self._tasks: list[asyncio.Task[None]] = []
        #: Set by :meth:`stop`: the loops end even if redis-py turned their cancellation into a
        #: connection error (which they would otherwise retry).
        self._stopping = False
        self._failures = Sparse()
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._publish = client.register_script(_PUBLISH)
        self._advertise = client.register_script(_ADVERTISE)
        self._demand = client.register_script(_DEMAND)
        #: How the node's loops are started (the app's supervisor restarts a loop that dies),
        #: and whether this node may lead (not while its collector keeps failing).
        self.spawn: Callable[[str, Callable[[], Coroutine[Any, Any, None]]],
                            asyncio.Task[None]] = (
            lambda name, factory: asyncio.create_task(factory(), name=f"quartsig-{name}"))
        self.eligible: Callable[[], bool] = lambda: True

    @classmethod
    def from_settings(cls, settings: Any, hub: Hub, deliver: Deliver,
                      metrics: Any = None) -> RedisBroker:
        client = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=max(2.0, BLOCK_MS / 1000 + 1.0),
            socket_connect_timeout=2.0,
            health_check_interval=10,
        )
        return cls(client, hub, deliver, prefix=settings.redis_prefix,
                   lease_ttl=settings.lease_ttl, metrics=metrics)

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the node's loops; Redis need not be up (they wait for it)."""
        log.info("joining the cluster as %s", self.node)
        self._tasks = [
            self.spawn("lease", self._campaign),
            self.spawn("changes", self._follow),
            self.spawn("demand", self._advertise_loop),
            self.spawn("newcomers", self._newcomers),
            self.spawn("wanted", self._listen_wanted),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        self._tasks = []
        if self.token is not None:
            with contextlib.suppress(RedisError, OSError):
                async with asyncio.timeout(1.0):  # let a successor lead at once
                    await self._release(keys=[self.keys["lease"], self.keys["wanted"]],
                                        args=[self.token])
            self._step_down("stopping")
        await self.client.aclose()

    # -- the lease ---------------------------------------------------------------------------

    def leading(self) -> bool:
        return self.token is not None and self.clock() < self._lease_until

    async def leadership(self) -> None:
        while not self.leading():
            self._led.clear()
            await self._led.wait()

    async def _campaign(self) -> None:
        """Try for the lease while nobody holds it; renew it at a third of its TTL while held."""
        ttl_ms = int(self.lease_ttl * 1000)
        while not self._stopping:
            try:
                if self.token is None:
                    if self.eligible():
                        await self._try_acquire(ttl_ms)
                elif not self.eligible():
                    self._step_down("this node's collector keeps failing")
                else:
                    sent = self.clock()
                    renewed = await self._renew(keys=[self.keys["lease"]],
                                                args=[self.token, ttl_ms])
                    if renewed:
                        self._lease_until = sent + self.lease_ttl
                    else:
                        self._step_down("lease lost")
            except (RedisError, OSError) as error:
                self._unreachable(error)
                if self.token is not None:
                    self._step_down("Redis unreachable")
            except Exception:  # a bug must not end the campaign: nobody would lead again
                log.exception("lease campaign failed")
                self._step_down("internal error")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_ttl / 3):
                    await self._vacant.wait()
            self._vacant.clear()

    async def _try_acquire(self, ttl_ms: int) -> None:
        sent = self.clock()
        granted = await self._acquire(
            keys=[self.keys["lease"], self.keys["term"], self.keys["epoch"]],
            args=[self.node, ttl_ms, int(time.time() * 1000), uuid.uuid4().hex],
        )
        self._reachable()
        if not granted:
            return
        token, term, epoch = (part.decode() if isinstance(part, bytes) else part
                              for part in granted)
        self.token, self.term = token, int(term)
        self._lease_until = sent + self.lease_ttl
        self.role = "leader"
        log.info("leading the cluster as %s (term %d)", self.node, self.term)
        if self.metrics is not None:
            self.metrics.lease.set(1)
            self.metrics.term.set(self.term)
        if epoch.encode() != self.epoch:
            await self._resync()
        self._led.set()

    def _step_down(self, why: str) -> None:
        if self.token is None:
            return
        log.info("stepping down as leader (term %d): %s", self.term, why)
        self.token = None
        self._lease_until = 0.0
        self.role = "follower"
        if self.metrics is not None:
            self.metrics.lease.set(0)

    # -- the collector's side ---------------------------------------------------------------

    async def demand(self) -> set[Key]:
        try:
            names = await self._demand(keys=[self.keys["demand"]])
        except (RedisError, OSError) as error:
            self._unreachable(error)
            self._step_down("Redis unreachable")
            return set()
        demand = {parse_key(name) for name in names} | self.hub.demand()
        gone = self._demanded - demand
        self._demanded = demand
        if gone:  # nobody watches them: a newcomer asks afresh rather than read a stale value
            with contextlib.suppress(RedisError, OSError):
                await self.client.hdel(self.keys["latest"], *(key_name(key) for key in gone))
        return demand

    async def wanted(self) -> set[Key]:
        await self._wanted_event.wait()
        return set(self._wanted)

    def wanted_now(self) -> set[Key]:
        self._wanted_event.clear()
        keys, self._wanted = self._wanted, set()
        return keys

    async def publish(self, batch: Batch) -> bool:
        """Publish through the fencing script; False (and step down) if this node may not."""
        token = self.token
        if token is None or not self.leading():
            self._count_fenced()
            return False
        try:
            seq = await self._publish(
                keys=[self.keys[name] for name in
                      ("lease", "latest", "changes", "epoch", "seq", "status")],
                args=publish_args(batch, token),
            )
        except (RedisError, OSError) as error:
            self._unreachable(error)
            self._step_down("Redis unreachable while publishing")
            return False
        if not seq:
            self._count_fenced()
            self._step_down("fenced: the lease is another node's")
            return False
        return True

    def _count_fenced(self) -> None:
        if self.metrics is not None:
            self.metrics.fenced.inc()

    async def _listen_wanted(self) -> None:
        """Gather the keys new to the cluster that any node asks for (the leader uses them)."""
        started = False
        while not self._stopping:
            try:
                if not started:  # from the stream's end: what was asked before is in demand
                    self._wanted_id, started = await self._tail(self.keys["wanted"]), True
                found = await self._read(self.keys["wanted"], self._wanted_id, 1_000)
            except (RedisError, OSError) as error:
                self._unreachable(error)
                await asyncio.sleep(0.5)
                continue
            for entry_id, fields in found:
                self._wanted_id = entry_id
                if b"released" in fields:
                    self._vacant.set()
                elif self.token is not None:
                    self._wanted.update(parse_key(n) for n in fields[b"keys"].split(b"\n"))
            if self._wanted:
                self._wanted_event.set()

    # -- the node's side ----------------------------------------------------------------------

    async def _follow(self) -> None:
        """Read changes from the stream and apply them; resync after a gap or a new epoch."""
        while not self._stopping:
            try:
                if self.epoch is None:
                    await self._resync()
                found = await self._read(self.keys["changes"], self._last_id, 100)
                self._reachable()
            except (RedisError, OSError) as error:
                self._unreachable(error)
                await asyncio.sleep(0.5)
                continue
            for entry_id, fields in found:
                if fields[b"epoch"] != self.epoch or int(fields[b"seq"]) != self._last_seq + 1:
                    await self._resync()  # Redis lost data, or entries were trimmed
                    break
                self._last_id = entry_id
                self._last_seq = int(fields[b"seq"])
                batch = decode_entry(fields[b"batch"])
                self.term = max(self.term, batch.term)
                self._apply(batch, self._last_seq, entry_id)

    async def _read(self, stream: str, after: bytes,
                    count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """``XREAD BLOCK`` of one stream, as (id, fields) pairs (redis-py types it loosely)."""
        found: Any = await self.client.xread({stream: after}, block=BLOCK_MS, count=count)
        return [(entry_id, fields) for _, entries in found or () for entry_id, fields in entries]

    async def _tail(self, stream: str) -> bytes:
        """The id of ``stream``'s last entry ("0-0" when it is empty)."""
        last: Any = await self.client.xrevrange(stream, count=1)
        return bytes(last[0][0]) if last else b"0-0"

    def _apply(self, batch: Batch, seq: int, entry_id: bytes | None = None) -> None:
        fresh = []
        entries = self.hub.entries
        for item in batch.values:
            key = item[0]
            if key in entries and self._seq.get(key, 0) < seq:  # only what this node holds
                self._seq[key] = seq
                fresh.append(item)
        batch.values = fresh
        if self.metrics is not None and entry_id is not None:
            sent_ms = int(entry_id.split(b"-")[0])
            self.metrics.stream_delay.observe(max(0.0, time.time() - sent_ms / 1000))
        self.deliver(batch)

    async def _resync(self) -> None:
        """Take a consistent snapshot (stream position, epoch, values, status) and apply it."""
        keys = list(self.hub.entries)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.keys["epoch"])
            pipe.get(self.keys["seq"])
            pipe.xrevrange(self.keys["changes"], count=1)
            pipe.get(self.keys["status"])
            if keys:
                pipe.hmget(self.keys["latest"], [key_name(key) for key in keys])
            epoch, seq, last, status, *values = await pipe.execute()
        if epoch != self.epoch:
            self._seq.clear()
        self.epoch = epoch
        self._last_seq = int(seq or 0)
        self._last_id = last[0][0] if last else b"0-0"
        self._reachable()
        for key, raw in zip(keys, values[0] if values else [], strict=False):
            if raw is not None:
                self._apply_latest(key, raw)
        if status is not None:
            upstream, reason, *rest = orjson.loads(status)
            self.deliver(Batch(status=(upstream, reason), retry_at=rest[0] if rest else None))
        elif self.hub.status == ("degraded", UNREACHABLE):
            self.deliver(Batch(status=("ok", "")))
        await self._advertise_now()

    def _apply_latest(self, key: Key, raw: bytes) -> None:
        seq, _, body = raw.partition(b" ")
        data, ts = orjson.loads(body)
        self._apply(Batch(values=[(key, data, ts)]), int(seq))

    async def _newcomers(self) -> None:
        """Keys new to this node: from ``latest`` if anyone has them, else ask the leader."""
        while not self._stopping:
            await self.hub.fresh_added.wait()
            self.hub.fresh_added.clear()
            keys = list(self.hub.fresh)
            if not keys:
                continue
            try:
                found: list[Any] = await self.client.hmget(
                    self.keys["latest"], [key_name(k) for k in keys])
                missing = [key for key, raw in zip(keys, found, strict=True) if raw is None]
                for key, raw in zip(keys, found, strict=True):
                    if raw is not None:
                        self._apply_latest(key, raw)
                if missing:
                    names = [key_name(key) for key in missing]
                    async with self.client.pipeline(transaction=False) as pipe:
                        await self._advertise(keys=[self.keys["demand"]],
                                              args=[int(DEMAND_TTL * 1000), *names], client=pipe)
                        pipe.xadd(self.keys["wanted"], {"keys": "\n".join(names)},
                                  maxlen=1_000, approximate=True)
                        self._cluster_keys = int((await pipe.execute())[0])
            except (RedisError, OSError) as error:
                self._unreachable(error)
                # The next advertisement carries them; the leader's next tick fetches them.

    async def _advertise_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(ADVERTISE_EVERY)
            try:
                await self._advertise_now()
            except (RedisError, OSError) as error:
                self._unreachable(error)

    async def _advertise_now(self) -> None:
        names = [key_name(key) for key in self.hub.demand()]
        for start in range(0, max(1, len(names)), 1_000):  # once at least: the count
            self._cluster_keys = int(await self._advertise(
                keys=[self.keys["demand"]],
                args=[int(DEMAND_TTL * 1000), *names[start:start + 1_000]]))
        self._forget(set(self.hub.entries))

    def _forget(self, held: Iterable[Key]) -> None:
        """Drop the ``seq`` of keys this node's hub no longer holds (it forgot their data)."""
        held = set(held)
        for key in [key for key in self._seq if key not in held]:
            del self._seq[key]

    # -- health ------------------------------------------------------------------------------

    def _unreachable(self, error: BaseException) -> None:
        if (held := self._failures.due()) is not None:
            log.warning("Redis unreachable: %s (%d more since the last report)", error, held)
        if self.redis_ok:
            self.redis_ok = False
            self.epoch = None  # whatever comes back, resync before trusting the stream again
            self.deliver(Batch(status=("degraded", UNREACHABLE)))

    def _reachable(self) -> None:
        self.redis_ok = True

    def cluster_keys(self) -> int:
        return self._cluster_keys

    def health(self) -> dict[str, object]:
        return {"role": "leader" if self.leading() else "follower", "term": self.term,
                "redis": "ok" if self.redis_ok else "unreachable"}
