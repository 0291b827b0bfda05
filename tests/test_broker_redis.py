"""The Redis broker against a real Redis: one leader, shared values, fencing, resync.

Nodes run in this process (a hub, a broker and a collector each, against the stand-in scanner);
the process-level failures (SIGKILL, SIGSTOP, a Redis restart) are in ``test_cluster.py``.
Every test uses its own key prefix (``tests/support/redisdb.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from quartsig.cluster.codec import Codec, key_name
from quartsig.cluster.demand import DEMAND_TTL
from quartsig.cluster.redis import STREAM_LENGTH, publish_args
from quartsig.cluster.redisbroker import RedisBroker
from quartsig.domain.model import Batch, Key
from quartsig.domain.protocol import Vocabulary
from quartsig.domain.symbols import SCREENERS, screener_for
from quartsig.fanout.handler import HubHandler
from quartsig.fanout.hub import Hub, Piece
from quartsig.feed.collector import Collector, CollectorSettings
from quartsig.ops.metrics import Metrics
from quartsig.plugins.loader import get_plugin_manager, load_profiles
from quartsig.upstream.scanner import ScannerClient
from tests.support.redisdb import REDIS_URL
from tests.support.standin import STANDIN, Standin, serve_standin

PROFILES = load_profiles(get_plugin_manager(entry_points=False))
VOCABULARY = Vocabulary(profiles=frozenset(PROFILES), screeners=SCREENERS)
CODEC = Codec(VOCABULARY)
USDJPY, EURUSD, BTC = "FX_IDC:USDJPY", "FX_IDC:EURUSD", "BINANCE:BTCUSDT"
WAIT = 20.0  # generous: these run on a busy 2-core machine


class Sink:
    """A connection that keeps the state a client would build from its frames."""

    def __init__(self) -> None:
        self.state: dict[Key, dict[str, Any]] = {}
        self.changed = asyncio.Event()
        self.texts: list[str] = []

    def deliver(self, key: Key, piece: Piece) -> None:
        base = {} if piece.type == "snapshot" else self.state.get(key, {})
        self.state[key] = {**base, **piece.data}
        self.changed.set()

    def discard(self, key: Key) -> None:
        self.state.pop(key, None)

    def send(self, text: str) -> None:
        self.texts.append(text)

    def close(self, code: int, reason: str) -> None: ...


@dataclass(eq=False)
class Node:
    hub: Hub
    broker: RedisBroker
    collector: Collector
    client: ScannerClient
    metrics: Metrics
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    sink: Sink = field(default_factory=Sink)

    def watch(self, *keys: Key) -> None:
        if self.sink not in self.hub.subscriptions:
            self.hub.attach(self.sink, 1)
        for key in keys:
            self.hub.subscribe(self.sink, key)

    async def crash(self) -> None:
        """Stop as a killed process would: no release, nothing more said to Redis."""
        self.collector.stop()
        broker = self.broker
        broker.stopping = broker.election.stopping = True
        broker.cluster.stopping = broker.replica.stopping = True
        for task in [*self.tasks, *broker._tasks]:
            task.cancel()
        await asyncio.wait([*self.tasks, *broker._tasks], timeout=10)
        broker._tasks = []
        broker.election.token = None
        await self.client.close()
        await broker.store.client.aclose()

    async def stop(self) -> None:
        self.collector.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.wait(self.tasks, timeout=10)
        await self.broker.stop()
        await self.client.close()


@contextlib.asynccontextmanager
async def cluster(prefix: str, size: int, *, interval: float = 1.0,
                  lease_ttl: float = 1.5) -> AsyncIterator[tuple[list[Node], Standin]]:
    runner, url = await serve_standin("127.0.0.1", 0, seed=3, change_share=1.0)
    nodes: list[Node] = []
    try:
        for number in range(size):
            hub = Hub()
            metrics = Metrics()
            broker = RedisBroker(aioredis.Redis.from_url(REDIS_URL, socket_timeout=3.0),
                                 HubHandler(hub), VOCABULARY, prefix=prefix, lease_ttl=lease_ttl,
                                 metrics=metrics, node=f"node{number}")
            client = ScannerClient(url, retry_delays=(0.05,), timeout=5.0,
                                   headers={"User-Agent": f"node{number}"})
            await client.start()
            collector = Collector(broker, PROFILES, client, screener_for,
                                  CollectorSettings(interval=interval, batch_delay=0.05),
                                  metrics=metrics)
            node = Node(hub, broker, collector, client, metrics)
            await broker.start()
            node.tasks.append(asyncio.create_task(collector.run()))
            nodes.append(node)
        yield nodes, runner.app[STANDIN]
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.stop()
        await runner.cleanup()


async def until(predicate: Callable[[], bool], within: float = WAIT) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (state of other objects: polling is simplest)
            await asyncio.sleep(0.02)


def leaders(nodes: list[Node]) -> list[Node]:
    return [node for node in nodes if node.broker.leading()]


def expected(standin: Standin, key: Key) -> dict[str, Any]:
    profile = PROFILES[key.profile]
    values = standin.values(key.symbol, key.tf)
    return profile.compute({base: values.get(base) for base in profile.columns})


def test_keys_round_trip_through_their_redis_names():
    key = Key("full", "BINANCE:BTCUSDT", "1h")
    assert CODEC.key(key_name(key).encode()) == key


async def test_one_leader_serves_every_node_the_union_of_their_demand(prefix: str):
    async with cluster(prefix, 3) as (nodes, standin):
        await until(lambda: len(leaders(nodes)) == 1)
        shared, only_b, only_c = (Key("summary", USDJPY, "1h"), Key("full", EURUSD, "5m"),
                                  Key("summary", BTC, "1d"))
        nodes[0].watch(shared)
        nodes[1].watch(shared, only_b)
        nodes[2].watch(only_c)
        want = {0: {shared}, 1: {shared, only_b}, 2: {only_c}}
        await until(lambda: all(set(nodes[i].sink.state) == keys for i, keys in want.items()))
        leader = leaders(nodes)[0]
        standin.clear_log()
        ticks = leader.collector.ticks
        await until(lambda: leader.collector.ticks >= ticks + 3)
        agents = {entry.user_agent for entry in standin.log}
        assert agents == {leader.broker.node}  # nobody else polled
        asked = {(entry.screener, ticker) for entry in standin.log for ticker in entry.tickers}
        assert asked == {("forex", USDJPY), ("forex", EURUSD), ("crypto", BTC)}
        # Every client holds exactly what the scanner says, once a tick has passed quietly.
        standin.config.change_share = 0.0
        standin.step()
        ticks = leader.collector.ticks
        await until(lambda: leader.collector.ticks >= ticks + 2)
        for node in nodes:
            await until(lambda node=node: all(  # type: ignore[misc]
                data == expected(standin, key) for key, data in node.sink.state.items()))


async def test_every_node_counts_the_distinct_keys_of_the_whole_cluster(prefix: str):
    """What the key cap (``QUARTSIG_MAX_KEYS``) is held against in a cluster."""
    async with cluster(prefix, 2, interval=30.0) as (nodes, _):
        shared = Key("summary", EURUSD, "4h")
        nodes[0].watch(Key("summary", EURUSD, "1h"), shared)
        nodes[1].watch(shared, Key("full", BTC, "1h"))
        await until(lambda: [node.broker.cluster_keys() for node in nodes] == [3, 3])
        nodes[1].hub.unsubscribe(nodes[1].sink, Key("full", BTC, "1h"))
        # its advertisement stops and the key expires; a node learns at its next advertisement
        await until(lambda: [node.broker.cluster_keys() for node in nodes] == [2, 2],
                    within=WAIT + DEMAND_TTL)


async def test_a_follower_newcomer_gets_a_cached_key_without_an_upstream_request(prefix: str):
    async with cluster(prefix, 2, interval=30.0) as (nodes, standin):
        await until(lambda: len(leaders(nodes)) == 1)
        leader = leaders(nodes)[0]
        # The first (empty) full tick is done: it cannot fetch the key beside the early fetch.
        await until(lambda: leader.collector.ticks >= 1)
        follower = next(node for node in nodes if node is not leader)
        key = Key("summary", USDJPY, "1h")
        leader.watch(key)
        await until(lambda: key in leader.sink.state)
        requests = len(standin.log)
        follower.watch(key)
        await until(lambda: key in follower.sink.state)
        assert follower.sink.state[key] == leader.sink.state[key]
        assert len(standin.log) == requests


async def test_a_key_new_to_the_cluster_asked_on_a_follower_is_fetched_early(prefix: str):
    async with cluster(prefix, 2, interval=60.0) as (nodes, standin):
        await until(lambda: len(leaders(nodes)) == 1)
        leader = leaders(nodes)[0]
        await until(lambda: leader.collector.ticks >= 1)  # the first (empty) full tick is done
        follower = next(node for node in nodes if node is not leader)
        key = Key("full", EURUSD, "15m")
        follower.watch(key)
        # The next full tick is a minute away: only an early fetch can bring it this soon.
        await until(lambda: key in follower.sink.state, within=WAIT)
        assert follower.sink.state[key] == expected(standin, key)


async def test_when_the_leader_dies_another_takes_over_and_values_keep_coming(prefix: str):
    async with cluster(prefix, 2, lease_ttl=1.5) as (nodes, standin):
        await until(lambda: len(leaders(nodes)) == 1)
        old = leaders(nodes)[0]
        survivor = next(node for node in nodes if node is not old)
        key = Key("summary", USDJPY, "5m")
        survivor.watch(key)
        await until(lambda: key in survivor.sink.state)
        await old.crash()
        await until(lambda: survivor.broker.leading())
        assert survivor.broker.term > old.broker.term
        standin.set_values(USDJPY, "5m", {"Recommend.All": 0.77})
        await until(lambda: survivor.sink.state[key].get("Recommend.All") == 0.77)


async def test_a_deposed_leader_publishes_nothing_and_steps_down(prefix: str):
    async with cluster(prefix, 2, interval=30.0, lease_ttl=30.0) as (nodes, _):
        await until(lambda: len(leaders(nodes)) == 1)
        old = leaders(nodes)[0]
        other = next(node for node in nodes if node is not old)
        key = Key("summary", USDJPY, "1h")
        other.watch(key)
        await until(lambda: key in other.sink.state)
        held = dict(other.sink.state[key])
        # Another node takes the lease behind the old leader's back, as after a long pause.
        raw = aioredis.Redis.from_url(REDIS_URL)
        await raw.set(f"{prefix}lease", "usurper:999", px=30_000)
        await raw.aclose()
        stale = Batch(values=[(key, {**held, "Recommend.All": -1.0}, 1)], term=old.broker.term)
        assert not await old.broker.publish(stale)
        assert not old.broker.leading()
        assert old.metrics.fenced._value.get() == 1
        await asyncio.sleep(0.3)  # a stale value would have reached the follower by now
        assert other.sink.state[key] == held


async def test_a_node_that_missed_entries_resyncs_from_the_latest_values(prefix: str):
    async with cluster(prefix, 2, interval=0.5) as (nodes, standin):
        await until(lambda: len(leaders(nodes)) == 1)
        follower = next(node for node in nodes if not node.broker.leading())
        key = Key("summary", EURUSD, "1h")
        follower.watch(key)
        await until(lambda: key in follower.sink.state)
        # Pretend this node fell behind: its position is older than the stream's oldest entry.
        follower.broker.replica._last_seq -= 5
        standin.set_values(EURUSD, "1h", {"Recommend.All": 0.55})
        await until(lambda: follower.sink.state[key].get("Recommend.All") == 0.55)
        assert follower.hub.entries[key].data == follower.sink.state[key]


def test_a_value_older_than_the_one_held_is_never_applied_whichever_way_it_comes():
    hub = Hub()
    sink = Sink()
    key = Key("summary", USDJPY, "1h")
    hub.attach(sink, 1)
    hub.subscribe(sink, key)
    broker = RedisBroker(aioredis.Redis.from_url(REDIS_URL), HubHandler(hub),  # never connects
                         VOCABULARY)
    replica = broker.replica
    replica.apply(Batch(values=[(key, {"Recommend.All": 0.9}, 2)]), seq=7)  # from the stream
    replica.apply(Batch(values=[(key, {"Recommend.All": 0.1}, 1)]), seq=5)  # an older look-up
    assert sink.state[key] == {"Recommend.All": 0.9}
    replica.apply(Batch(values=[(key, {"Recommend.All": 0.5}, 3)]), seq=8)
    assert sink.state[key] == {"Recommend.All": 0.5}


def test_publish_args_chunk_values_and_put_rejections_and_status_on_the_last_entry():
    keys = [Key("summary", f"FX_IDC:T{n}", "1h") for n in range(450)]
    batch = Batch(values=[(key, {"n": n}, n) for n, key in enumerate(keys)],
                  rejected=[(Key("full", "FX_IDC:NOPE", "1d"), "unknown_symbol", "no such symbol")],
                  failed=[(keys[1], "profile_failed", "compute raised")],
                  deferred=[(keys[2], "the early-fetch budget is spent", 1234)],
                  retry_at=5678,
                  status=("ok", ""), term=9)
    args = publish_args(batch, "node:9")
    assert args[:2] == ["node:9", STREAM_LENGTH]
    entries, at = [], 3
    while at < len(args):
        count = int(args[at])
        entries.append(CODEC.batch(args[at + 1]))
        at += 2 + 2 * count
    assert [len(entry.values) for entry in entries] == [200, 200, 50]
    assert entries[0].values[0] == (keys[0], {"n": 0}, 0)
    assert [bool(entry.rejected) for entry in entries] == [False, False, True]
    last = entries[2]
    assert last.failed == [(keys[1], "profile_failed", "compute raised")]
    assert last.deferred == [(keys[2], "the early-fetch budget is spent", 1234)]
    assert [entry.retry_at for entry in entries] == [None, None, 5678]
    assert [entry.status for entry in entries] == [None, None, ("ok", "")]
    assert {entry.term for entry in entries} == {9}


async def test_a_leader_that_stops_gracefully_hands_over_at_once(prefix: str):
    # A 90 s lease: waiting it out, or even a third of it (the campaign's round), would take
    # longer than the deadline; only the release and the word on the wanted stream make it.
    async with cluster(prefix, 2, lease_ttl=90.0) as (nodes, _):
        await until(lambda: len(leaders(nodes)) == 1)
        old = leaders(nodes)[0]
        successor = next(node for node in nodes if node is not old)
        await old.stop()
        nodes.remove(old)
        await until(lambda: successor.broker.leading(), within=WAIT)
        assert successor.broker.term > old.broker.term
