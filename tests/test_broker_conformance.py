"""Every broker scenario, run against both backends: the protocol means the same on each.

A broker sees its node only through a :class:`~quartsig.cluster.broker.Handler`; here that is
:class:`Node`, which records what it is handed. The Redis broker runs against the shared Redis
under the test's own prefix (``tests/support/redisdb.py``), as a cluster of one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from collections.abc import Set as AbstractSet
from typing import Any

import pytest
import redis.asyncio as aioredis

from quartsig.cluster.backends import open_broker
from quartsig.cluster.broker import Broker
from quartsig.cluster.memory import MemoryBroker
from quartsig.cluster.redisbroker import RedisBroker
from quartsig.config import Settings
from quartsig.domain.model import Batch, Key
from quartsig.domain.protocol import Vocabulary
from quartsig.domain.symbols import SCREENERS
from tests.support.redisdb import REDIS_URL

VOCABULARY = Vocabulary(profiles=frozenset({"full", "summary"}), screeners=SCREENERS)
EURUSD = Key("summary", "FX_IDC:EURUSD", "1h")
USDJPY = Key("full", "FX_IDC:USDJPY", "5m")
WAIT = 20.0  # generous: a busy 2-core machine


class Node:
    """The handler of a node with no hub: what it watches is set by the test."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.watching: set[Key] = set()
        self.holding: set[Key] = set()
        self._asked: asyncio.Queue[set[Key]] = asyncio.Queue()

    def apply(self, batch: Batch) -> object:
        self.batches.append(batch)
        return None

    def watched(self) -> set[Key]:
        return set(self.watching)

    def held(self) -> AbstractSet[Key]:
        return self.holding

    async def asked(self) -> set[Key]:
        return await self._asked.get()

    def ask(self, *keys: Key) -> None:
        """A client subscribes to ``keys``, which this node has no data for."""
        self.watching |= set(keys)
        self.holding |= set(keys)
        self._asked.put_nowait(set(keys))

    def values(self) -> dict[Key, dict[str, Any]]:
        return {key: data for batch in self.batches for key, data, _ in batch.values}

    def statuses(self) -> list[tuple[str, str]]:
        return [batch.status for batch in self.batches if batch.status is not None]

    def rejected(self) -> set[Key]:
        return {key for batch in self.batches for key, _, _ in batch.rejected}


@pytest.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest,
               prefix: str) -> AsyncIterator[tuple[Broker, Node]]:
    node = Node()
    broker: Broker
    if request.param == "memory":
        broker = MemoryBroker(node)
    else:
        broker = RedisBroker(aioredis.Redis.from_url(REDIS_URL, socket_timeout=3.0), node,
                             VOCABULARY, prefix=prefix, lease_ttl=1.5, node="conformance")
    await broker.start()
    try:
        yield broker, node
    finally:
        await broker.stop()


async def until(predicate: Callable[[], bool], within: float = WAIT) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (state of other objects: polling is simplest)
            await asyncio.sleep(0.02)


def test_the_backend_is_chosen_by_the_urls_scheme():
    node = Node()
    memory = open_broker(Settings.from_env({}, redis_url=None), node, VOCABULARY)
    assert isinstance(memory, MemoryBroker)
    for url in ("redis://127.0.0.1:6379/0", "rediss://user:secret@redis.example:6380/1"):
        broker = open_broker(Settings.from_env({}, redis_url=url), node, VOCABULARY)
        assert isinstance(broker, RedisBroker)


async def test_a_single_node_leads_and_says_so(pair: tuple[Broker, Node]):
    broker, _ = pair
    async with asyncio.timeout(WAIT):
        await broker.leadership()
    assert broker.leading()
    assert broker.health()["role"] in {"standalone", "leader"}
    assert broker.health()["term"] == broker.term


async def test_a_published_batch_reaches_the_node_holding_its_keys(pair: tuple[Broker, Node]):
    broker, node = pair
    async with asyncio.timeout(WAIT):
        await broker.leadership()
    node.watching.add(EURUSD)
    node.holding.add(EURUSD)
    unknown = Key("summary", "FX_IDC:NOPE", "1h")
    batch = Batch(values=[(EURUSD, {"Recommend.All": 0.5}, 1)],
                  rejected=[(unknown, "unknown_symbol", "no such symbol")],
                  status=("ok", ""), term=broker.term)
    assert await broker.publish(batch)
    await until(lambda: node.values().get(EURUSD) == {"Recommend.All": 0.5})
    assert unknown in node.rejected()
    assert ("ok", "") in node.statuses()


async def test_demand_is_every_watched_key_and_counted(pair: tuple[Broker, Node]):
    broker, node = pair
    async with asyncio.timeout(WAIT):
        await broker.leadership()
    node.watching |= {EURUSD, USDJPY}
    assert {EURUSD, USDJPY} <= await broker.demand()

    async def counted() -> None:
        while broker.cluster_keys() != 2:
            await broker.demand()
            await asyncio.sleep(0.05)

    async with asyncio.timeout(WAIT):  # "at the last count": a tick or an advertisement
        await counted()


async def test_a_key_new_to_everyone_is_wanted_and_taken_once(pair: tuple[Broker, Node]):
    broker, node = pair
    async with asyncio.timeout(WAIT):
        await broker.leadership()
    node.ask(USDJPY)
    async with asyncio.timeout(WAIT):
        assert USDJPY in await broker.wanted()
    taken = broker.wanted_now()
    assert USDJPY in taken
    assert broker.wanted_now() == set()  # taken: the collector owes it now
    with contextlib.suppress(TimeoutError):  # nothing new: wanted() waits (not a busy loop)
        async with asyncio.timeout(0.3):
            await broker.wanted()
            pytest.fail("wanted() returned with nothing new asked")
