"""Claims: the first to claim a name holds it for a while, in one process or across a cluster.

Two of the bot's guarantees are the same primitive: an update Telegram delivered twice (or to
two nodes) is handled by whoever claims its ``update_id`` first, and only the holder of the
poller's claim may call ``getUpdates``. In memory a claim is a dict entry with a deadline; in
Redis it is ``SET name owner NX PX ttl``, renewed and released only by its owner (a Lua check),
so a node that paused past its TTL cannot release its successor's claim.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Claims(Protocol):
    async def claim(self, name: str, owner: str, ttl: float) -> bool:
        """Take ``name`` for ``ttl`` seconds unless someone holds it; whether we got it."""

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s claim; False when it lapsed or someone else holds it."""

    async def release(self, name: str, owner: str) -> None:
        """Give ``name`` up if ``owner`` still holds it."""

    async def holder(self, name: str) -> str | None: ...

    async def close(self) -> None: ...


class MemoryClaims:
    """One process's claims; the clock is injected so tests move time instead of sleeping."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._held: dict[str, tuple[str, float]] = {}

    def _live(self, name: str) -> tuple[str, float] | None:
        held = self._held.get(name)
        if held is not None and held[1] <= self.clock():
            del self._held[name]
            return None
        return held

    async def claim(self, name: str, owner: str, ttl: float) -> bool:
        if self._live(name) is not None:
            return False
        if len(self._held) > 10_000:  # expired names go when the map grows, not per call
            for stale in [n for n, (_, until) in self._held.items() if until <= self.clock()]:
                del self._held[stale]
        self._held[name] = (owner, self.clock() + ttl)
        return True

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        held = self._live(name)
        if held is None or held[0] != owner:
            return False
        self._held[name] = (owner, self.clock() + ttl)
        return True

    async def release(self, name: str, owner: str) -> None:
        held = self._live(name)
        if held is not None and held[0] == owner:
            del self._held[name]

    async def holder(self, name: str) -> str | None:
        held = self._live(name)
        return None if held is None else held[0]

    async def close(self) -> None:
        self._held.clear()


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisClaims:
    """Claims every node of a cluster sees; names are put under ``prefix``."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, prefix: str) -> RedisClaims:
        from quartsig.cluster.redis import connect  # timeouts, TLS, ACL users

        return cls(connect(url), prefix)

    async def claim(self, name: str, owner: str, ttl: float) -> bool:
        return bool(await self.client.set(self.prefix + name, owner, nx=True,
                                          px=max(1, int(ttl * 1000))))

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        return bool(await self._renew(keys=[self.prefix + name],
                                      args=[owner, max(1, int(ttl * 1000))]))

    async def release(self, name: str, owner: str) -> None:
        await self._release(keys=[self.prefix + name], args=[owner])

    async def holder(self, name: str) -> str | None:
        value = await self.client.get(self.prefix + name)
        return None if value is None else value.decode() if isinstance(value, bytes) else str(value)

    async def close(self) -> None:
        await self.client.aclose()
