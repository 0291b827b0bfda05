"""The delivery stream in front of the outbox rows: announced triggers are claimed, sent and
acknowledged; entries a dead consumer left pending are taken over once idle past the lease
(in memory with an injected clock, and in Redis with XAUTOCLAIM); a malformed entry is
skipped, counted, logged once and acknowledged; Redis away never stops delivery (the poll)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from tortoise.context import TortoiseContext

from quartsig.alerts import storage
from quartsig.alerts.channels import Channel, Message, Outcome, Target
from quartsig.alerts.delivery import Deliverer
from quartsig.alerts.recorder import Recorder
from quartsig.alerts.storage import AlertDelivery
from quartsig.cluster.deliveries import GROUP, MemoryDeliveries, RedisDeliveries, group_for
from quartsig.domain.model import Batch, Key
from tests.support.alertsdb import alerts_database, fire
from tests.support.clocks import HandClock
from tests.support.net import eventually
from tests.support.redisdb import REDIS_URL

OWNER = 3005
KEY = Key("summary", "FX_IDC:EURUSD", "1h")
T0 = 1_700_000_000.0
LEASE = 60.0




class Recording:
    kind = "webhook"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: Message, target: Target) -> Outcome:
        self.sent.append(message.id)
        return Outcome("sent")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[TortoiseContext]:
    async with alerts_database(tmp_path, OWNER) as context:
        await storage.add_channel(OWNER, "webhook", "http://receiver/x", secret="whsec_")
        yield context


async def _fire(*labels: str) -> list[int]:
    return await fire(OWNER, KEY, labels, T0)


def _worker(channel: Recording, clock: HandClock, stream: object) -> Deliverer:
    channels: dict[str, Channel] = {"webhook": channel}
    return Deliverer(channels, clock=clock, lease=LEASE, rng=lambda: 0.5,
                     announcements=stream)  # type: ignore[arg-type]


async def test_announced_triggers_are_sent_and_acknowledged(db: TortoiseContext) -> None:
    clock, channel = HandClock(T0), Recording()
    stream = MemoryDeliveries("a", idle=LEASE, clock=clock)
    worker = _worker(channel, clock, stream)
    await worker.written(await _fire("NEUTRAL", "BUY", "SELL"))
    assert not worker._wake.is_set()  # the stream carries it: the poll is not woken
    assert await worker.consume(block=0)
    assert len(channel.sent) == 2 and stream.pending == {}
    assert {r.status for r in await AlertDelivery.all()} == {"sent"}


async def test_a_dead_consumers_entries_are_taken_over_once_idle_past_the_lease(
        db: TortoiseContext) -> None:
    clock, channel = HandClock(T0), Recording()
    dead = MemoryDeliveries("dead", idle=LEASE, clock=clock)
    alive = MemoryDeliveries("alive", idle=LEASE, clock=clock, shared=dead)
    await dead.announce(await _fire("NEUTRAL", "BUY", "SELL"))
    entries = await dead.read(0)  # read, and the rows claimed, then the node dies
    assert len(entries) == 2
    for due in await storage.due_deliveries(int(T0 * 1000)):
        assert await storage.claim(due.id, int(T0 * 1000), int(LEASE * 1000))
    worker = _worker(channel, clock, alive)
    assert await worker.consume(block=0) and channel.sent == []  # pending, not idle yet
    clock.now += LEASE
    assert await worker.consume(block=0)
    assert len(channel.sent) == 2 and dead.pending == {}


@pytest.fixture
async def redis_client(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def test_redis_hands_a_dead_consumers_entries_to_another_with_xautoclaim(
        db: TortoiseContext, prefix: str, redis_client: aioredis.Redis) -> None:
    clock, channel = HandClock(T0), Recording()
    rejected: list[str] = []
    dead = RedisDeliveries(redis_client, prefix, consumer="dead", idle=0.0)
    alive = RedisDeliveries(redis_client, prefix, consumer="alive", idle=0.0,
                            on_reject=rejected.append)
    await dead.read(0.001)  # the group exists before the announcements
    await dead.announce(await _fire("NEUTRAL", "BUY", "SELL"))
    assert len(await dead.read(0.001)) == 2  # then the node dies without acknowledging
    pending = await redis_client.xpending(dead.stream, GROUP)
    assert pending["pending"] == 2 and pending["consumers"][0]["name"] == b"dead"
    worker = _worker(channel, clock, alive)

    async def taken() -> bool:
        clock.now += 1  # the sweep's own pace (Redis's clock decides the idle time)
        await worker.consume(block=0.05)
        return len(channel.sent) == 2

    await eventually(taken, 30, what="the dead consumer's entries claimed")
    assert (await redis_client.xpending(dead.stream, GROUP))["pending"] == 0
    assert rejected == []


async def test_a_malformed_entry_is_skipped_counted_logged_once_and_acknowledged(
        db: TortoiseContext, prefix: str, redis_client: aioredis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    clock, channel = HandClock(T0), Recording()
    rejected: list[str] = []
    stream = RedisDeliveries(redis_client, prefix, consumer="a", idle=LEASE,
                             on_reject=rejected.append)
    await stream.read(0.001)
    for fields in ({"trigger": "12abc"}, {"other": "1"}, {"trigger": "0"},
                   {"trigger": "1", "extra": "x"}, {"trigger": "9" * 30}):
        await redis_client.xadd(stream.stream, fields)  # type: ignore[arg-type]
    await stream.announce(await _fire("NEUTRAL", "BUY"))
    worker = _worker(channel, clock, stream)
    with caplog.at_level(logging.WARNING):
        for _ in range(100):  # a bounded number of reads, not a time
            assert await worker.consume(block=0.05)
            if len(rejected) >= 5 and channel.sent:
                break
    assert rejected == ["delivery entry"] * 5 and len(channel.sent) == 1
    assert sum("bad delivery entry" in r.getMessage() for r in caplog.records) == 1
    assert (await redis_client.xpending(stream.stream, stream.group))["pending"] == 0


async def test_redis_away_falls_back_to_the_poll(db: TortoiseContext) -> None:
    clock, channel = HandClock(T0), Recording()
    away = RedisDeliveries.from_url("redis://127.0.0.1:9/0", "x:", consumer="a")
    worker = _worker(channel, clock, away)
    try:
        await worker.written(await _fire("NEUTRAL", "BUY"))  # the XADD fails
        assert not worker.streaming and worker._wake.is_set()  # the poll, at its fast pace
        assert not await worker.consume(block=0.01)
        assert await worker.drain() == 1 and len(channel.sent) == 1
    finally:
        await away.close()


async def test_the_recorder_announces_what_it_committed(db: TortoiseContext) -> None:
    await storage.create_rule(OWNER, {"keys": [list(KEY)], "condition": {"kind": "label"}},
                              limit=10)
    clock, channel = HandClock(T0), Recording()
    stream = MemoryDeliveries("a", idle=LEASE, clock=clock)
    worker = _worker(channel, clock, stream)
    recorder = Recorder(reload=3600, on_written=worker.written)
    await recorder.start()
    try:
        for i, value in enumerate(["NEUTRAL", "BUY", "SELL"]):
            recorder.on_published(Batch(values=[(KEY, {"rec.all": value},
                                                 int(T0 * 1000) + i * 60_000)]), 1)
        await eventually(lambda: recorder.idle.is_set() and not recorder.queue, 30,
                         what="the burst written")
    finally:
        await recorder.stop()
    written = [t.id for t in await storage.AlertTrigger.all().order_by("id")]
    assert len(written) == 2
    assert [int(f[b"trigger"]) for _, f in stream.entries] == written  # type: ignore[index]


async def test_consumers_of_dead_processes_with_nothing_pending_are_forgotten(
        db: TortoiseContext, prefix: str, redis_client: aioredis.Redis) -> None:
    stream = RedisDeliveries(redis_client, prefix, consumer="alive", idle=LEASE, forget=-1)
    busy = RedisDeliveries(redis_client, prefix, consumer="busy", idle=LEASE)
    await stream.read(0.001)
    await redis_client.xgroup_createconsumer(stream.stream, GROUP, "gone")
    await busy.announce([1])
    assert len(await busy.read(0.001)) == 1  # pending on "busy": it must stay
    stream._swept = float("-inf")
    await stream.read(0.001)  # the sweep
    names = {c["name"] for c in await redis_client.xinfo_consumers(stream.stream, GROUP)}
    assert b"busy" in names and b"gone" not in names


async def test_every_group_of_channel_kinds_sees_every_entry(
        prefix: str, redis_client: aioredis.Redis) -> None:
    """A node without the bot (``quartsig collect``) and one with it read in different groups:
    each entry reaches one node of each, so the one that can send Telegram always sees it."""
    webhooks = RedisDeliveries(redis_client, prefix, consumer="collect", idle=LEASE,
                               group=group_for(["webhook"]))
    both = RedisDeliveries(redis_client, prefix, consumer="serve", idle=LEASE,
                           group=group_for(["webhook", "telegram"]))
    assert group_for(["webhook", "telegram"]) == group_for(["telegram", "webhook"])
    assert webhooks.group != both.group
    for reader in (webhooks, both):
        await reader.read(0.001)  # the groups exist before the entry
    await webhooks.announce([7])
    assert [trigger for _, trigger in await webhooks.read(0.05)] == [7]
    assert [trigger for _, trigger in await both.read(0.05)] == [7]
