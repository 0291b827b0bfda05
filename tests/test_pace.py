"""Pacing Telegram sends, in memory and in Redis (one fresh key prefix per test), on an injected
clock: a chat gets one slot per ``chat_gap``, the bot one per ``gap``, a 429's hold is seen by
every node, a turn too far away takes nothing, and nothing read back from Redis is believed
unchecked."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from quartsig.cluster.pace import (
    MemoryPace,
    Pace,
    PaceError,
    RedisPace,
    Turn,
    checked_turn,
    schedule,
)
from tests.support.clocks import HandClock
from tests.support.redisdb import REDIS_URL, redis_up

T0 = 1_700_000_000.0




Make = Callable[[HandClock], Pace]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """A factory of paces sharing one schedule (for Redis: one prefix, so two are two
    nodes)."""
    made: list[Pace] = []
    if request.param == "memory":
        shared: dict[int, MemoryPace] = {}

        def memory(clock: HandClock) -> Pace:  # one process: the same object
            return shared.setdefault(0, MemoryPace(chat_gap=1.0, gap=0.1, clock=clock))

        yield memory
        return
    if not await redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"test:{uuid.uuid4().hex[:8]}:"

    def redis(clock: HandClock) -> Pace:
        pace = RedisPace.from_url(REDIS_URL, prefix, chat_gap=1.0, gap=0.1, clock=clock)
        made.append(pace)
        return pace

    yield redis
    for pace in made:
        await pace.close()
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = await client.keys(prefix + "*")
    if keys:
        await client.delete(*keys)
    await client.aclose()


def _close(turn: Turn, granted: bool, wait: float) -> bool:
    return turn.granted is granted and turn.wait == pytest.approx(wait, abs=0.002)


async def test_each_chat_gets_one_slot_per_gap_and_the_bot_one_per_gap(make: Make) -> None:
    clock = HandClock(T0)
    pace = make(clock)
    assert _close(await pace.turn(1, 10), True, 0.0)
    assert _close(await pace.turn(1, 10), True, 1.0)  # the chat's next slot
    assert _close(await pace.turn(2, 10), True, 0.1)  # another chat: the bot's next slot
    assert _close(await pace.turn(3, 10), True, 0.2)
    clock.now += 5  # time passes: everyone is free again
    assert _close(await pace.turn(1, 10), True, 0.0)


async def test_a_turn_too_far_away_takes_nothing(make: Make) -> None:
    clock = HandClock(T0)
    pace = make(clock)
    assert (await pace.turn(1, 10)).granted
    assert _close(await pace.turn(1, 0.5), False, 1.0)
    assert _close(await pace.turn(1, 0.5), False, 1.0)  # the refusal reserved no slot
    clock.now += 1
    assert _close(await pace.turn(1, 0.5), True, 0.0)


async def test_a_hold_is_seen_by_every_node(make: Make) -> None:
    clock = HandClock(T0)
    one, two = make(clock), make(clock)
    await one.hold(7, 30)
    assert _close(await two.turn(7, 5), False, 30.0)
    assert _close(await two.turn(8, 5), True, 0.0)  # other chats are not held
    await one.hold(7, 2)  # a shorter hold never shortens a longer one
    clock.now += 30
    assert _close(await one.turn(7, 5), True, 0.0)


async def test_two_nodes_share_one_schedule(make: Make) -> None:
    clock = HandClock(T0)
    one, two = make(clock), make(clock)
    waits = [(await (one if i % 2 else two).turn(100 + i, 10)).wait for i in range(10)]
    assert waits == pytest.approx([i * 0.1 for i in range(10)], abs=0.002)


@pytest.mark.usefixtures("prefix")
async def test_redis_values_are_not_believed_unchecked(prefix: str) -> None:
    clock = HandClock(T0)
    pace = RedisPace.from_url(REDIS_URL, prefix, chat_gap=1.0, gap=0.1, clock=clock)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.set(pace.chat_key(5), "banana")
        await client.set(pace.chat_key(6), int((T0 + 3 * 86_400) * 1000))  # days ahead
        assert _close(await pace.turn(5, 10), True, 0.0)  # neither is believed
        assert _close(await pace.turn(6, 10), True, 0.1)
        assert _close(await pace.turn(5, 10), True, 1.0)  # and both were rewritten
        assert _close(await pace.turn(6, 10), True, 1.1)
    finally:
        await client.aclose()
        await pace.close()


def test_a_reply_that_is_not_a_turn_is_refused() -> None:
    assert checked_turn([1, 250], 1.0) == Turn(True, 0.25)
    assert checked_turn([0, 5000], 1.0) == Turn(False, 5.0)
    for reply in (None, [1], [1, "2"], [2, 0], [1, -1], [True, 0], [0, 10**12], [1, 5000],
                  b"OK"):
        with pytest.raises(PaceError):
            checked_turn(reply, 1.0)


def test_the_schedule_keeps_both_rates_over_a_burst() -> None:
    """300 messages to 20 chats at once, some chats far busier than others: no chat twice
    within its gap, the bot never more than 25 within a second, and no slot left idle while
    a chat that could use it waits."""
    chat_next: dict[int, int] = {}
    taken: set[int] = set()
    at: list[tuple[int, int]] = []
    for i in range(300):
        chat = i % 20 if i % 3 else 0  # chat 0 gets a third of everything
        slot, wait, chat_next[chat] = schedule(0, chat_next.get(chat, 0), taken,
                                               chat_gap=1100, gap=40, max_wait=600_000)
        assert slot is not None and wait == slot * 40
        taken.add(slot)
        at.append((wait, chat))
    for chat in range(20):
        times = sorted(t for t, c in at if c == chat)
        assert all(b - a >= 1100 for a, b in itertools.pairwise(times))
    times = sorted(t for t, _ in at)
    assert len(set(times)) == len(times)
    assert all(times[i + 25] - times[i] >= 1000 for i in range(len(times) - 25))
    others = sorted(t for t, c in at if c != 0)
    assert others[-1] < 12_000  # chat 0's queue (100 messages, 110 s) holds nobody up
