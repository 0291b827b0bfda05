"""The cluster's Redis: what lives there, the scripts that change it, and the connection.

What lives in Redis (every name under ``QUARTSIG_REDIS_PREFIX``):

- ``lease``: ``node:term`` while a node collects, ``SET NX PX``; renewed at a third of its TTL
  by compare-and-set, released by compare-and-delete on a graceful stop
  (:mod:`~quartsig.cluster.election`).
- ``term``: the fencing counter. Each grant takes ``max(INCR, now in ms)``, so terms keep rising
  even when Redis comes back empty (no persistence): a wipe cannot hand out an old term again.
- ``epoch``: a random id made when the data space is new. A node that sees it change knows Redis
  lost its data (restart, eviction) and resyncs instead of trusting its stream position.
- ``latest``: one hash, ``profile|symbol|tf`` -> ``"seq [data, ts]"``: what a newcomer on any node
  gets at once, in one ``HMGET`` for all of its keys. The leader drops keys nobody demands.
- ``changes``: a stream of published batches, chunked, each entry numbered by ``seq``; every node
  reads it from its last id and applies it (:mod:`~quartsig.cluster.node`). It is trimmed
  (exactly: ``~`` could keep a hundred entries more) to an entry count derived from the
  recent entries' size (:func:`stream_length`), so it holds about
  ``QUARTSIG_REDIS_STREAM_BYTES``; a reader further behind resyncs.
- ``seq``: the global publication counter; no value read may claim a higher one.
- ``status``: the last upstream status published, restored on resync.
- ``demand``: a sorted set of keys scored by expiry (Redis's clock); each node refreshes its own
  (:mod:`~quartsig.cluster.demand`), so a dead node's keys leave within ``DEMAND_TTL``.
- ``wanted``: a stream of keys new to the whole cluster; the leader fetches them early.
- ``deliveries``: a stream of trigger ids the leader wrote, read by the consumer group
  ``deliverers`` (:mod:`~quartsig.cluster.deliveries`; the alerts' delivery workers).
- ``nodes``: what the nodes must share (token key, plugins, profiles), as fingerprints, never
  secrets (:mod:`~quartsig.cluster.fingerprint`); it expires when no node refreshes it.

Every publication is one Lua script that checks the lease token before it writes anything
(Kleppmann's fencing token, with Redis as the storage that checks it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from quartsig.cluster.codec import Codec, key_name
from quartsig.domain.model import Batch
from quartsig.ops.logs import Sparse

log = logging.getLogger(__name__)

#: Milliseconds a blocking read waits before it looks around again.
BLOCK_MS = 1_000
#: Values per stream entry.
CHUNK = 200
#: Most entries the change stream keeps, and fewest (a reader that far behind resyncs).
STREAM_LENGTH = 2_000
STREAM_MIN_LENGTH = 16
#: Entries the ``wanted`` stream keeps (each a few keys).
WANTED_LENGTH = 1_000
UNREACHABLE = "cluster store (Redis) unreachable"
#: What a Redis call may raise when Redis is away (or a script is refused).
FAILURES = (RedisError, OSError)

ACQUIRE = """
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

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
-- KEYS: lease, wanted; ARGV: token. Tells the others on the stream they block on.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, '*', 'released', ARGV[1])
  return 1
end
return 0
"""

PUBLISH = """
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
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[2], '*',
             'seq', string.format('%d', seq), 'epoch', epoch, 'batch', entry)
  last = seq
  i = i + 2 + 2 * count
end
return last
"""

ADVERTISE = """
-- KEYS: demand; ARGV: ttl_ms, members...; returns how many keys the cluster watches now
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local until_ms = now_ms + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'GT', until_ms, ARGV[i]) end
return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf')
"""

DEMAND = """
-- KEYS: demand; ARGV: longest ttl_ms. Drops expired members, and scores beyond any honest
-- advertisement (a forged member would otherwise stay for ever); returns the rest.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. (now_ms + tonumber(ARGV[1])), '+inf')
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

NAMES = ("lease", "term", "epoch", "latest", "changes", "seq", "status", "demand", "wanted",
         "nodes")


def unprotected(url: str) -> str | None:
    """Why a Redis URL deserves a warning at start-up, or None: anyone who reaches an
    unauthenticated Redis on the network can forge the cluster's data."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or parts.password:
        return None
    host = parts.hostname or "localhost"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    plain = " over plain TCP (use rediss:// for TLS)" if parts.scheme == "redis" else ""
    return (f"Redis at {host} is reached without a password{plain}: anyone who can reach it "
            "can feed this cluster's clients; see docs/cluster.md")


def connect(url: str) -> aioredis.Redis:
    """A client for ``redis://``, ``rediss://`` (TLS) or ``unix://``, with ACL user and
    password from the URL (``redis://user:password@host``); warns when unprotected."""
    if (warning := unprotected(url)) is not None:
        log.warning("%s", warning)
    return aioredis.Redis.from_url(
        url,
        socket_timeout=max(2.0, BLOCK_MS / 1000 + 1.0),
        socket_connect_timeout=2.0,
        health_check_interval=10,
    )


def stream_length(entry_bytes: float, budget: int) -> int:
    """How many entries the change stream may keep so that it holds about ``budget`` bytes:
    2 000 entries of a 20 000-key ``full`` tick would be gigabytes."""
    if entry_bytes <= 0:
        return STREAM_LENGTH
    return max(STREAM_MIN_LENGTH, min(STREAM_LENGTH, int(budget // entry_bytes)))


def publish_args(batch: Batch, token: str, maxlen: int = STREAM_LENGTH) -> list[bytes | str | int]:
    """The publish script's ARGV: the token, then chunks of at most ``CHUNK`` values."""
    args: list[bytes | str | int] = [token, maxlen, Codec.encode_status(batch)]
    chunks = [batch.values[i:i + CHUNK] for i in range(0, len(batch.values), CHUNK)] or [[]]
    for number, chunk in enumerate(chunks):
        args += [len(chunk), Codec.encode_batch(batch, chunk, last=number == len(chunks) - 1)]
        for key, data, ts in chunk:
            args += [key_name(key), Codec.encode_value(data, ts)]
    return args


@dataclass
class Store:
    """The client, the names under the prefix, the scripts, and whether Redis answers.

    Every part of a node reports through :meth:`failed` and :meth:`answered`, so the node tells
    its clients ``degraded`` once when Redis goes away and resyncs when it is back."""

    client: aioredis.Redis
    prefix: str = "quartsig:"
    #: Called once when Redis stops answering (the node says ``degraded``, forgets its position).
    on_lost: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        self.names = {name: f"{self.prefix}{name}" for name in NAMES}
        self.ok = True
        self._failures = Sparse()
        register = self.client.register_script
        self.acquire, self.renew, self.release, self.publish, self.advertise, self.demand = (
            register(ACQUIRE), register(RENEW), register(RELEASE), register(PUBLISH),
            register(ADVERTISE), register(DEMAND))

    def keys(self, *names: str) -> list[str]:
        return [self.names[name] for name in names]

    def failed(self, error: BaseException) -> None:
        if (held := self._failures.due()) is not None:
            log.warning("Redis unreachable: %s (%d more since the last report)", error, held)
        if self.ok:
            self.ok = False
            if self.on_lost is not None:
                self.on_lost()

    def answered(self) -> None:
        self.ok = True

    async def read(self, stream: str, after: bytes,
                   count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """``XREAD BLOCK`` of one stream, as (id, fields) pairs (redis-py types it loosely)."""
        found: Any = await self.client.xread({stream: after}, block=BLOCK_MS, count=count)
        entries = [(entry_id, fields) for _, batch in found or () for entry_id, fields in batch]
        self.answered()
        return entries

    async def tail(self, stream: str) -> bytes:
        """The id of ``stream``'s last entry ("0-0" when it is empty)."""
        last: Any = await self.client.xrevrange(stream, count=1)
        return bytes(last[0][0]) if last else b"0-0"


async def guarded(store: Store, work: Callable[[], Awaitable[object]], pause: float,
                  what: str) -> None:
    """Run one round of a loop's ``work``: Redis trouble marks the store unreachable, a bug is
    logged with its traceback; either way the loop goes on after ``pause`` seconds."""
    try:
        await work()
        return
    except FAILURES as error:
        store.failed(error)
    except Exception:
        log.exception("%s failed; going on", what)
    await asyncio.sleep(pause)
