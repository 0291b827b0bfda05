"""Per-account limits that hold for the whole cluster: sockets open at once, and new keys a minute.

Standalone, one process sees every socket and every subscribe, so :class:`LocalQuota` only says
yes and the node's own counts (``access.caps``, ``feed.budget.KeyQuota``) do the limiting. In a
cluster each node would count only its own: an account could open ``QUARTSIG_MAX_CONNECTIONS_PER_
ACCOUNT`` sockets on every node and subscribe ``QUARTSIG_NEW_KEYS_PER_MINUTE`` new keys through
each. :class:`RedisQuota` counts in Redis instead:

- ``sockets:{account}``: a sorted set, one member per open socket of the account on any node,
  scored by when it lapses (Redis' own clock). A socket joins by a script that drops lapsed
  members, counts the rest and adds itself only below the cap, atomically; its node renews its
  members every 2 s and removes them when they close. A node that dies without saying
  so stops renewing, so its sockets lapse within ``ttl`` instead of counting forever.
- ``held:{account}``: a hash, node -> the distinct keys the account holds there, written when the
  node renews its sockets (every 2 s); what nodes without a live socket of the account hold is
  dropped. The node's check of ``QUARTSIG_MAX_KEYS_PER_ACCOUNT`` adds what the others hold, as
  last read.
- ``newkeys:{account}``: a sorted set of the account's new keys (``profile|symbol|tf``), scored by
  when they were first asked for, trimmed to the window. Subscribing runs synchronously on the
  event loop (no await between a check and what it guards), so the node pushes its new keys
  every ``sync`` seconds and reads back the cluster's distinct count (of every account
  connected here at each renewal): the check adds what *other* nodes counted, as last read (a
  moment late, like ``QUARTSIG_MAX_KEYS``'s cluster count).

Redis trouble never locks anyone out: a socket that cannot be counted is let in (the node's own
cap still holds), and counts come back at the next renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from quartsig.domain.model import Key
from quartsig.ops.logs import Sparse

log = logging.getLogger(__name__)

#: Seconds a socket's place in the cluster count lasts unless its node renews it.
SOCKET_TTL = 15.0
#: Longest gap between two renewals of a node's sockets (a third of their TTL if shorter).
RENEW_EVERY = 2.0
#: Seconds between two pushes of this node's new keys (and reads of the cluster's counts).
SYNC_EVERY = 0.5
#: Closed sockets remembered for removal while Redis is away (the rest lapse within the TTL).
MAX_LEFT = 100_000
#: Seconds a Redis call of a socket's admission may take before the socket is let in uncounted.
JOIN_TIMEOUT = 1.0

_JOIN = """
-- KEYS: sockets:{account}; ARGV: member, cap (0: none), ttl_ms
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_NEW_KEYS = """
-- KEYS: newkeys:{account}; ARGV: window_ms, keys... -> distinct keys in the window
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'NX', ms, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""

_SEATS = """
-- KEYS: sockets:{account}, held:{account}; ARGV: node, held count, ttl_ms, members...
-- Renews this node's sockets of the account and says how many keys it holds here; returns the
-- keys the account holds on the other nodes that still have a live socket of it.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[3])
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], ms + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
local live = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ms, '+inf')) do
  live[string.match(member, '^([^:]*):')] = true
end
local total = 0
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] then
    if live[fields[i]] then total = total + tonumber(fields[i + 1])
    else redis.call('HDEL', KEYS[2], fields[i]) end
  end
end
return total
"""


class Quota(Protocol):
    """What the ``/ws`` route asks about an account, beyond this node's own counts."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def join(self, account: int) -> Hashable | None:
        """A seat for one more socket of ``account`` (give it back with :meth:`leave`), or None
        when the account holds ``cap`` sockets across the cluster already."""

    def leave(self, seat: Hashable) -> None:
        """A socket that joined closed."""

    def over(self, account: int, key: Key, limit: int) -> bool:
        """Whether ``account`` asked for ``limit`` distinct new keys in the window across the
        cluster (as last read) and ``key`` is not one of them."""

    def noted(self, account: int, key: Key) -> None:
        """``account`` asked for the new ``key`` here."""

    def keys_elsewhere(self, account: int) -> int:
        """Keys ``account`` holds on other nodes (as last read)."""


class LocalQuota:
    """One process: the node's own counts are the whole story."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def join(self, account: int) -> Hashable | None:
        return account

    def leave(self, seat: Hashable) -> None:
        return None

    def over(self, account: int, key: Key, limit: int) -> bool:
        return False

    def noted(self, account: int, key: Key) -> None:
        return None

    def keys_elsewhere(self, account: int) -> int:
        return 0


class NewKeys:
    """This node's side of one account's new-key count: pure, with an injected clock."""

    __slots__ = ("cluster", "mine", "pending")

    def __init__(self) -> None:
        #: This node's new keys in the window -> when first asked for (the node's clock).
        self.mine: dict[str, float] = {}
        #: Not pushed yet.
        self.pending: set[str] = set()
        #: The cluster's distinct count, as last read (this node's pushed keys included).
        self.cluster = 0

    def note(self, key: str, now: float) -> None:
        if key not in self.mine:
            self.mine[key] = now
            self.pending.add(key)

    def trim(self, cutoff: float) -> None:
        for key in [key for key, at in self.mine.items() if at <= cutoff]:
            del self.mine[key]
            self.pending.discard(key)

    def elsewhere(self) -> int:
        """The cluster's count beyond this node's own (a key counted on two nodes counts once)."""
        return max(0, self.cluster - (len(self.mine) - len(self.pending)))


class RedisQuota:
    """Counts in Redis, shared by every node with the same prefix."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "quartsig:",
        per_account: int = 20,
        window: float = 60.0,
        ttl: float = SOCKET_TTL,
        sync: float = SYNC_EVERY,
        node: str | None = None,
        held: Callable[[int], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.per_account = per_account
        self.window = window
        self.ttl = ttl
        self.sync = sync
        #: Seconds between renewals of this node's sockets (and trades of held-key counts).
        self.renew_every = min(ttl / 3, RENEW_EVERY)
        self.node = (node or uuid.uuid4().hex[:12]).replace(":", "-")
        #: How many distinct keys an account holds on this node (None: not counted).
        self.held = held
        #: account -> keys it holds on the other nodes, as last read.
        self._held_elsewhere: dict[int, int] = {}
        self.clock = clock
        self._serial = itertools.count()
        #: account -> this node's counted sockets (their members).
        self._seats: dict[int, set[str]] = {}
        #: Sockets closed whose members are still to be removed.
        self._left: list[tuple[int, str]] = []
        self._keys: dict[int, NewKeys] = {}
        self._join = client.register_script(_JOIN)
        self._new_keys = client.register_script(_NEW_KEYS)
        self._seats_script = client.register_script(_SEATS)
        self._task: asyncio.Task[None] | None = None
        self._failures = Sparse()

    @classmethod
    def from_settings(cls, settings: Any, held: Callable[[int], int] | None = None) -> RedisQuota:
        client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0,
            health_check_interval=10,
        )
        return cls(client, prefix=settings.redis_prefix,
                   per_account=settings.max_connections_per_account, held=held)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="quartsig-quota")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5.0)
            self._task = None
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):  # our sockets are closed: free their seats now
                self._left += [(a, m) for a, members in self._seats.items() for m in members]
                self._seats.clear()
                await self._flush_left()
        await self.client.aclose()

    # -- sockets ------------------------------------------------------------------------------

    def _sockets(self, account: int) -> str:
        return f"{self.prefix}sockets:{account}"

    async def join(self, account: int) -> Hashable | None:
        member = f"{self.node}:{next(self._serial)}"
        try:
            async with asyncio.timeout(JOIN_TIMEOUT):
                joined = await self._join(keys=[self._sockets(account)], args=[
                    member, self.per_account, int(self.ttl * 1000)])
        except (RedisError, OSError, TimeoutError) as error:
            self._trouble(error)  # let it in: this node's own cap still holds
        else:
            if not joined:
                return None
        self._seats.setdefault(account, set()).add(member)
        return (account, member)

    def leave(self, seat: Hashable) -> None:
        if not isinstance(seat, tuple):
            return
        account, member = seat
        members = self._seats.get(account)
        if members is not None and member in members:
            members.discard(member)
            if not members:
                del self._seats[account]
            if len(self._left) < MAX_LEFT:  # else it lapses on its own, unrenewed
                self._left.append((account, member))

    async def _flush_left(self) -> None:
        if not self._left:
            return
        left, self._left = self._left, []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for account, member in left:
                    pipe.zrem(self._sockets(account), member)
                await pipe.execute()
        except BaseException:
            self._left = left + self._left
            raise

    # -- new keys -----------------------------------------------------------------------------

    def over(self, account: int, key: Key, limit: int) -> bool:
        keys = self._keys.get(account)
        if keys is None or _name(key) in keys.mine:
            return False
        return len(keys.mine) + keys.elsewhere() >= limit

    def noted(self, account: int, key: Key) -> None:
        keys = self._keys.get(account)
        if keys is None:
            keys = self._keys[account] = NewKeys()
        keys.note(_name(key), self.clock())

    async def _sync_keys(self, everyone: bool = True) -> None:
        """Push new keys and read back the counts: of every account known here (``everyone``),
        else only of those with keys to push."""
        cutoff = self.clock() - self.window
        for account in list(self._keys):
            self._keys[account].trim(cutoff)
            if not self._keys[account].mine and account not in self._seats:
                del self._keys[account]
        for account in self._seats:  # connected here: what other nodes counted matters
            self._keys.setdefault(account, NewKeys())
        if not self._keys:
            return
        accounts = [a for a, keys in self._keys.items() if everyone or keys.pending]
        if not accounts:
            return
        window_ms = int(self.window * 1000)
        pushed = {account: set(self._keys[account].pending) for account in accounts}
        async with self.client.pipeline(transaction=False) as pipe:
            for account in accounts:
                await self._new_keys(keys=[f"{self.prefix}newkeys:{account}"],
                                     args=[window_ms, *pushed[account]], client=pipe)
            counts = await pipe.execute()
        for account, count in zip(accounts, counts, strict=True):
            keys = self._keys.get(account)
            if keys is not None:
                keys.pending -= pushed[account]
                keys.cluster = int(count)

    # -- held keys ----------------------------------------------------------------------------

    def keys_elsewhere(self, account: int) -> int:
        return self._held_elsewhere.get(account, 0)

    async def _renew(self) -> None:
        """Renew this node's sockets, and trade held-key counts with the other nodes."""
        accounts = list(self._seats)
        ttl_ms = int(self.ttl * 1000)
        async with self.client.pipeline(transaction=False) as pipe:
            for account in accounts:
                held = 0 if self.held is None else self.held(account)
                await self._seats_script(
                    keys=[self._sockets(account), f"{self.prefix}held:{account}"],
                    args=[self.node, held, ttl_ms, *self._seats[account]], client=pipe)
            counts = await pipe.execute()
        self._held_elsewhere = {account: int(count)
                                for account, count in zip(accounts, counts, strict=True)}

    # -- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> None:
        renewed = -float("inf")
        while True:
            try:
                await self._flush_left()
                due = self.clock() - renewed >= self.renew_every
                await self._sync_keys(everyone=due)
                if due:
                    await self._renew()
                    renewed = self.clock()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis away: counted again once it is back
                self._trouble(error)
            await asyncio.sleep(self.sync)

    def _trouble(self, error: BaseException) -> None:
        if (held := self._failures.due()) is not None:
            log.warning("per-account cluster counts: Redis unreachable: %s (%d more since the "
                        "last report)", error, held)


def _name(key: Key) -> str:
    return f"{key.profile}|{key.symbol}|{key.tf}"
