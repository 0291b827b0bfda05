"""Pace: whose turn it is to send to Telegram, across every node of a cluster.

Telegram answers 429 to a bot that sends more than about one message a second to one chat or
about thirty a second in all, and then makes that chat wait ``retry_after``. Each node's
delivery worker sends on its own, so the limits can only hold if the nodes share one schedule.
Time is cut into *slots* of ``gap`` (40 ms: 25 a second) and a slot carries one message; each
chat also has a clock, the earliest time its next message may go (``chat_gap`` after its last).
A *turn* is the first free slot at or after both now and the chat's clock; taking it marks the
slot and moves the chat's clock. Slots are marked one by one rather than with one "next free"
time for the bot, so a chat whose turn is a second away does not hold up every other chat
meanwhile. A 429 moves the chat's clock ``retry_after`` ahead (:meth:`Pace.hold`), so every
node waits it out, not only the one told.

:func:`schedule` is the whole rule, pure, in integer milliseconds; :class:`MemoryPace` keeps
the clocks and slots in a dict (one process), :class:`RedisPace` in Redis under the settings'
prefix, moved by one Lua script that mirrors :func:`schedule`. A caller whose turn is further
away than ``max_wait`` is told how long instead of being given a slot, so nobody holds a slot
they will not use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: Seconds between two messages to one chat: Telegram's "about one a second", counted where
#: they arrive, with room for a send that arrives late after an on-time one (a loaded node, the
#: network): a tenth of a second was not enough on a busy 2-core machine (a 429 in the cluster
#: failover test, once in a full run of the suite); half a second costs a burst's next digest
#: 0.4 s.
CHAT_GAP: Final = 1.5
#: Seconds per slot of the bot: 25 messages a second, under Telegram's ~30.
GAP: Final = 1 / 25
#: The longest hold believed (a 429's ``retry_after``, a value read back from Redis): a day.
MAX_HOLD: Final = 86_400.0
DAY_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class Turn:
    """``granted``: the slot is taken, send after ``wait`` seconds. Otherwise nothing was
    taken and the turn is ``wait`` seconds away (over the caller's ``max_wait``)."""

    granted: bool
    wait: float


def believed(now: int, value: int | None) -> int:
    """A chat's clock as read back: missing, or further ahead than a day, means now."""
    return now if value is None or value > now + DAY_MS else max(now, value)


def schedule(now: int, chat_next: int, taken: Container[int], *, chat_gap: int, gap: int,
             max_wait: int) -> tuple[int | None, int, int]:
    """``(slot, wait, chat_next)`` in ms for a message to a chat whose clock is ``chat_next``
    at ``now``: the first slot not in ``taken`` at or after both, the wait until it and the
    chat's clock after it. ``slot`` is None (nothing to take; ``chat_next`` unchanged) when
    the turn is more than ``max_wait`` away."""
    earliest = max(now, chat_next)
    slot = -(-earliest // gap)
    while slot in taken:
        slot += 1
    at = slot * gap
    if at - now > max_wait:
        return None, at - now, chat_next
    return slot, at - now, at + chat_gap


def held(now: int, chat_next: int, hold: int) -> int:
    """The chat's clock once Telegram said to wait ``hold`` ms from ``now``."""
    return max(chat_next, now + min(max(hold, 0), DAY_MS))


def ms(seconds: float) -> int:
    """Seconds as whole ms, rounded up (``1.1`` is 1100, not 1101 from float noise)."""
    return max(0, math.ceil(round(seconds * 1000, 6)))


class Pace(Protocol):
    async def turn(self, chat: int, max_wait: float) -> Turn:
        """Take the next slot for ``chat`` if it is at most ``max_wait`` seconds away."""

    async def hold(self, chat: int, seconds: float) -> None:
        """Telegram said ``retry_after=seconds`` for ``chat``: nobody sends to it before."""

    async def close(self) -> None: ...


class MemoryPace:
    """One process's schedule; the clock is injected so tests move time instead of
    sleeping."""

    def __init__(self, *, chat_gap: float = CHAT_GAP, gap: float = GAP,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.chat_gap, self.gap, self.clock = ms(chat_gap), max(1, ms(gap)), clock
        self._chats: dict[int, int] = {}
        self._slots: set[int] = set()

    def _now(self) -> int:
        now = ms(self.clock())
        if len(self._chats) + len(self._slots) > 10_000:  # the past goes when it piles up
            self._chats = {c: t for c, t in self._chats.items() if t > now}
            self._slots = {s for s in self._slots if s * self.gap >= now}
        return now

    async def turn(self, chat: int, max_wait: float) -> Turn:
        now = self._now()
        slot, wait, chat_next = schedule(
            now, believed(now, self._chats.get(chat)), self._slots, chat_gap=self.chat_gap,
            gap=self.gap, max_wait=ms(max_wait))
        if slot is None:
            return Turn(False, wait / 1000)
        self._slots.add(slot)
        self._chats[chat] = chat_next
        return Turn(True, wait / 1000)

    async def hold(self, chat: int, seconds: float) -> None:
        now = self._now()
        self._chats[chat] = held(now, believed(now, self._chats.get(chat)), ms(seconds))

    async def close(self) -> None:
        self._chats.clear()
        self._slots.clear()


# KEYS: the chat's clock (a string of Unix ms), the taken slots (a sorted set of slot numbers).
# ARGV: now in ms ('' for Redis's own clock), chat gap, gap, max wait (ms). Returns
# {granted (0/1), wait in ms}. A clock that is not a number, or more than a day ahead, is not
# believed: it counts as now (as :func:`believed`).
_TURN = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local chat_gap, gap, max_wait = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local chat_next = tonumber(redis.call('GET', KEYS[1]))
if chat_next == nil or chat_next ~= chat_next or chat_next > now + 86400000 then
  chat_next = now
end
local slot = math.ceil(math.max(now, chat_next) / gap)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. math.floor(now / gap))
while redis.call('ZSCORE', KEYS[2], slot) do slot = slot + 1 end
local at = slot * gap
if at - now > max_wait then return {0, at - now} end
redis.call('ZADD', KEYS[2], slot, slot)
redis.call('PEXPIRE', KEYS[2], at - now + 60000)
redis.call('SET', KEYS[1], at + chat_gap, 'PX', at + chat_gap - now + 60000)
return {1, at - now}
"""

# KEYS: the chat's clock. ARGV: now in ms ('' for Redis's), the hold in ms (at most a day).
_HOLD = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local v = tonumber(redis.call('GET', KEYS[1]))
if v == nil or v ~= v or v > now + 86400000 then v = now end
local until_ = math.max(v, now + tonumber(ARGV[2]))
redis.call('SET', KEYS[1], until_, 'PX', until_ - now + 60000)
return until_ - now
"""


class PaceError(RuntimeError):
    """Redis answered the pace script with something it cannot have meant."""


def checked_turn(reply: Any, max_wait: float) -> Turn:
    """The script's ``{granted, wait_ms}``, or :class:`PaceError`: nothing read from Redis
    is trusted unchecked (a wrong script, a proxy, a corrupted key)."""
    if not (isinstance(reply, list | tuple) and len(reply) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in reply)):
        raise PaceError(f"pace: unexpected reply {reply!r:.80}")
    granted, wait_ms = reply
    if granted not in (0, 1) or not 0 <= wait_ms <= MAX_HOLD * 1000 + 60_000:
        raise PaceError(f"pace: reply out of range {reply!r:.80}")
    if granted and wait_ms > ms(max_wait):
        raise PaceError(f"pace: granted a turn {wait_ms} ms away, over {max_wait:g} s")
    return Turn(bool(granted), wait_ms / 1000)


class RedisPace:
    """The schedule every node shares: ``<prefix>pace:chat:<id>`` holds a chat's clock (Unix
    ms) and ``<prefix>pace:slots`` the taken slots; both expire a minute after their last
    time has passed (a key that lingers is harmless: a time in the past means now).
    ``clock``: None uses Redis's own clock (one clock for the whole cluster); tests inject
    one."""

    def __init__(self, client: Redis, prefix: str, *, chat_gap: float = CHAT_GAP,
                 gap: float = GAP, clock: Callable[[], float] | None = None) -> None:
        self.client, self.prefix = client, prefix
        self.chat_gap, self.gap, self.clock = chat_gap, gap, clock
        self._turn = client.register_script(_TURN)
        self._hold = client.register_script(_HOLD)

    @classmethod
    def from_url(cls, url: str, prefix: str, **options: Any) -> RedisPace:
        from quartsig.cluster.redis import connect  # timeouts, TLS, ACL users

        return cls(connect(url), prefix, **options)

    def _now(self) -> str:
        return "" if self.clock is None else str(ms(self.clock()))

    def chat_key(self, chat: int) -> str:
        return f"{self.prefix}pace:chat:{int(chat)}"

    async def turn(self, chat: int, max_wait: float) -> Turn:
        reply = await self._turn(
            keys=[self.chat_key(chat), f"{self.prefix}pace:slots"],
            args=[self._now(), ms(self.chat_gap), max(1, ms(self.gap)), ms(max_wait)])
        return checked_turn(reply, max_wait)

    async def hold(self, chat: int, seconds: float) -> None:
        reply = await self._hold(keys=[self.chat_key(chat)],
                                 args=[self._now(), ms(min(max(seconds, 0.0), MAX_HOLD))])
        if not (isinstance(reply, int) and 0 <= reply <= MAX_HOLD * 1000 + 60_000):
            raise PaceError(f"pace: unexpected hold reply {reply!r:.80}")

    async def close(self) -> None:
        await self.client.aclose()
