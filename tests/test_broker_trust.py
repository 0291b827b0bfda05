"""Data from Redis is not trusted (#20.2): garbage in any structure costs one skipped entry.

Each structure gets what a bug, an old version or an intruder could leave there, and the cluster
keeps publishing; ``latest`` and the change stream stay bounded; ACL users and TLS URLs work.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from quartsig.cluster.codec import Codec, Untrusted, key_name
from quartsig.cluster.redis import STREAM_LENGTH, STREAM_MIN_LENGTH, stream_length, unprotected
from quartsig.cluster.redisbroker import RedisBroker
from quartsig.domain.model import Batch, Key
from quartsig.ops.metrics import Metrics
from tests.support.redisdb import REDIS_URL
from tests.test_broker_conformance import Node, until
from tests.test_broker_redis import EURUSD, USDJPY, VOCABULARY, WAIT, cluster, leaders

CODEC = Codec(VOCABULARY)


def rejected(metrics: Metrics, what: str) -> float:
    value: float = metrics.redis_rejected.labels(what=what)._value.get()
    return value


@pytest.mark.parametrize("name", [
    b"bad", b"9999999999999 bad", b"summary|FX_IDC:EURUSD", b"nope|FX_IDC:EURUSD|1h",
    b"summary|fx_idc:eurusd|1h", b"summary|EURUSD|1h", b"summary|FX_IDC:EURUSD|7x",
    b"summary|NOWHERE:EURUSD|1h", b"\xff\xfe|a|b", b"summary|FX_IDC:" + b"A" * 200 + b"|1h",
])
def test_key_names_from_redis_go_through_the_clients_vocabulary(name: bytes):
    with pytest.raises(Untrusted):
        CODEC.key(name)


@pytest.mark.parametrize("raw", [
    b"garbage", b"7", b"7 not json", b"7 {}", b'7 [[], 1]', b'7 [{"a": 1}, -1]',
    b'7 [{"a": 1}, "1"]', b'-1 [{"a": 1}, 1]', b'99999999999999999 [{"a": 1}, 1]',
    b'11 [{"a": 1}, 1]',  # beyond the global counter (10): a forged seq
])
def test_latest_values_are_shape_checked_and_their_seq_bounded(raw: bytes):
    with pytest.raises(Untrusted):
        CODEC.value(raw, ceiling=10)
    assert CODEC.value(b'10 [{"a": 1}, 1]', ceiling=10) == (10, {"a": 1}, 1)


@pytest.mark.parametrize("body", [
    b"[]", b"nope", b'{"term": 1}', b'{"term": -1, "values": [], "rejected": [], "failed": [],'
    b' "deferred": []}', b'{"term": 1, "values": [["summary|FX_IDC:EURUSD|1h", [], 1]],'
    b' "rejected": [], "failed": [], "deferred": []}',
    b'{"term": 1, "values": [], "rejected": [], "failed": [], "deferred": [], "status": "ok"}',
])
def test_batches_are_shape_checked(body: bytes):
    with pytest.raises(Untrusted):
        CODEC.batch(body)


def test_a_bad_key_drops_only_its_own_row_of_a_batch():
    metrics = Metrics()
    codec = Codec(VOCABULARY, on_reject=lambda what: metrics.redis_rejected.labels(what).inc())
    key = Key("summary", EURUSD, "1h")
    good = [key_name(key), {"a": 1}, 5]
    batch = codec.batch(orjson.dumps({"term": 3, "values": [good, ["x|y|z", {}, 1]],
                                      "rejected": [], "failed": [], "deferred": []}))
    assert batch.values == [(key, {"a": 1}, 5)]
    assert rejected(metrics, "key") == 1


def test_the_change_stream_keeps_about_its_byte_budget():
    assert stream_length(0, 64 * 2**20) == STREAM_LENGTH  # nothing measured yet
    assert stream_length(1_000, 64 * 2**20) == STREAM_LENGTH  # small ticks: 2 000 entries
    assert stream_length(300_000, 64 * 2**20) == 223  # 200 ``full`` values an entry
    assert stream_length(10**9, 64 * 2**20) == STREAM_MIN_LENGTH


@pytest.mark.parametrize(("url", "warned"), [
    ("redis://127.0.0.1:6379/0", False),
    ("redis://localhost:6379/0", False),
    ("redis://[::1]:6379/0", False),
    ("unix:///run/redis.sock", False),
    ("redis://user:secret@10.0.0.5:6379/0", False),
    ("rediss://:secret@redis.example:6380/0", False),
    ("redis://10.0.0.5:6379/0", True),
    ("rediss://redis.example:6380/0", True),
])
def test_start_up_warns_when_redis_is_reached_without_auth_off_this_machine(url: str,
                                                                          warned: bool):
    assert (unprotected(url) is not None) == warned


async def test_garbage_in_every_structure_never_stops_the_cluster(prefix: str):
    async with cluster(prefix, 2, interval=0.5) as (nodes, standin):
        await until(lambda: len(leaders(nodes)) == 1)
        leader = leaders(nodes)[0]
        follower = next(node for node in nodes if node is not leader)
        watched = Key("summary", EURUSD, "1h")
        follower.watch(watched)
        await until(lambda: watched in follower.sink.state)
        raw = aioredis.Redis.from_url(REDIS_URL)
        try:
            epoch = await raw.get(f"{prefix}epoch")
            seq = int(await raw.get(f"{prefix}seq"))
            newcomer = Key("full", USDJPY, "15m")
            seconds, micros = await raw.time()
            soon = seconds * 1000 + micros // 1000 + 5_000  # an honest advertisement's score
            await raw.zadd(f"{prefix}demand", {"bad": 9999999999999, "summary|FX:X|9z": soon})
            await raw.xadd(f"{prefix}changes", {"seq": seq + 1, "epoch": epoch, "batch": "junk"})
            await raw.xadd(f"{prefix}changes", {"nothing": "here"})
            await raw.xadd(f"{prefix}changes", {"seq": 10**15, "epoch": epoch, "batch": "{}"})
            await raw.hset(f"{prefix}latest", key_name(newcomer), "junk")
            await raw.hset(f"{prefix}latest", key_name(watched),
                           b"99999999999999 " + orjson.dumps([{"Recommend.All": -9.0}, 1]))
            await raw.xadd(f"{prefix}wanted", {"keys": "bad|key\nsummary|FX_IDC:EURUSD|1h"})
            await raw.xadd(f"{prefix}wanted", {"what": "ever"})
            await raw.set(f"{prefix}status", "junk")
        finally:
            await raw.aclose()
        # A new key on the follower (its ``latest`` value is junk) still gets data, early.
        follower.watch(newcomer)
        await until(lambda: newcomer in follower.sink.state)
        # Both nodes keep getting values; the forged huge seq pinned nothing.
        for value in (0.31, 0.62):
            standin.set_values(EURUSD, "1h", {"Recommend.All": value})
            leader.watch(watched)
            for node in nodes:
                await until(lambda node=node, value=value: node.sink.state.get(  # type: ignore[misc]
                    watched, {}).get("Recommend.All") == value)
        raw = aioredis.Redis.from_url(REDIS_URL)
        try:  # the forged members are gone, not only skipped
            assert not {b"bad", b"summary|FX:X|9z"} & set(
                await raw.zrange(f"{prefix}demand", 0, -1))
        finally:
            await raw.aclose()
        for what in ("demand member", "stream entry", "latest value", "wanted entry"):
            assert sum(rejected(node.metrics, what) for node in nodes) >= 1, what


async def test_latest_keeps_only_demanded_keys_across_a_change_of_leader(prefix: str):
    async with cluster(prefix, 2, interval=0.5, lease_ttl=1.5) as (nodes, _):
        await until(lambda: len(leaders(nodes)) == 1)
        old = leaders(nodes)[0]
        survivor = next(node for node in nodes if node is not old)
        watched = Key("summary", EURUSD, "1h")
        survivor.watch(watched)
        await until(lambda: watched in survivor.sink.state)
        raw = aioredis.Redis.from_url(REDIS_URL)
        try:  # what a leader that died left behind, and junk
            stray = {key_name(Key("summary", "FX_IDC:GBPUSD", "1h")): "1 [{}, 1]", "junk": "x"}
            await raw.hset(f"{prefix}latest", mapping=stray)
            await old.crash()
            await until(lambda: survivor.broker.leading())

            async def cleaned() -> bool:
                fields = set(await raw.hkeys(f"{prefix}latest"))
                return fields == {key_name(watched).encode()}

            async with asyncio.timeout(WAIT):
                while not await cleaned():  # noqa: ASYNC110 (Redis state: polling)
                    await asyncio.sleep(0.05)
        finally:
            await raw.aclose()


async def test_the_change_stream_is_bounded_in_bytes(prefix: str):
    node = Node()
    broker = RedisBroker(aioredis.Redis.from_url(REDIS_URL), node, VOCABULARY, prefix=prefix,
                         lease_ttl=5.0, stream_bytes=2_000_000)
    await broker.start()
    try:
        async with asyncio.timeout(WAIT):
            await broker.leadership()
        keys = [Key("full", f"FX_IDC:T{n}", "1h") for n in range(400)]
        data = {f"column.{n}": n * 0.123456789 for n in range(8)}  # ~24 kB an entry
        for _ in range(40):
            assert await broker.publish(Batch(values=[(key, data, 1) for key in keys]))
        raw = aioredis.Redis.from_url(REDIS_URL)
        try:
            length = await raw.xlen(f"{prefix}changes")
            size = await raw.memory_usage(f"{prefix}changes")
        finally:
            await raw.aclose()
        assert length == stream_length(broker.entry_bytes, 2_000_000) < 80  # not 2 000 entries
        assert size < 1.5 * 2_000_000  # the budget, and the structure's own overhead
    finally:
        await broker.stop()


@pytest.fixture
async def acl_url(prefix: str) -> AsyncIterator[str]:
    """A Redis ACL user that may touch only this test's keys, removed afterwards."""
    user, password = f"quartsig-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = aioredis.Redis.from_url(REDIS_URL)
    await admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "resetkeys",
                                f"~{prefix}*", "+@all", "-@dangerous")
    try:
        yield f"redis://{user}:{password}@127.0.0.1:6379/0"
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


async def test_an_acl_user_from_the_url_runs_a_node(prefix: str, acl_url: str):
    from quartsig.cluster.redis import connect

    node = Node()
    node.watching.add(Key("summary", EURUSD, "1h"))
    node.holding.add(Key("summary", EURUSD, "1h"))
    broker = RedisBroker(connect(acl_url), node, VOCABULARY, prefix=prefix, lease_ttl=5.0)
    await broker.start()
    try:
        async with asyncio.timeout(WAIT):
            await broker.leadership()
        key = Key("summary", EURUSD, "1h")
        assert await broker.publish(Batch(values=[(key, {"Recommend.All": 0.4}, 1)]))
        await until(lambda: any(batch.values for batch in node.batches))
        assert broker.health()["redis"] == "ok"
        outside: Any = connect(acl_url)
        with pytest.raises(Exception, match=r"NOPERM|permission"):
            await outside.get("elsewhere:lease")  # the ACL holds: only this prefix
        await outside.aclose()
    finally:
        await broker.stop()


async def test_a_rediss_url_speaks_tls_and_checks_the_certificate():
    from redis.asyncio.connection import SSLConnection

    from quartsig.cluster.redis import connect

    client = connect("rediss://quartsig:secret@redis.example:6380/2?ssl_ca_certs=/etc/ca.pem")
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    connection: Any = pool.make_connection()
    assert connection.ssl_context.cert_reqs == ssl.CERT_REQUIRED  # redis-py's default, kept
    assert connection.ssl_context.ca_certs == "/etc/ca.pem"
    assert (connection.username, connection.password) == ("quartsig", "secret")
    await client.aclose()


def test_connecting_without_auth_off_this_machine_logs_a_warning(caplog: pytest.LogCaptureFixture):
    from quartsig.cluster.redis import connect

    connect("redis://10.0.0.5:6379/0")
    assert "without a password" in caplog.text
    caplog.clear()
    connect("redis://127.0.0.1:6379/0")
    assert caplog.text == ""


class Fragile(Node):
    """A node whose handler fails on one batch, as a bug would."""

    def apply(self, batch: Batch) -> object:
        if batch.status == ("degraded", "boom"):
            raise RuntimeError("a bug in the handler")
        return super().apply(batch)


async def test_an_entry_the_node_fails_on_is_skipped_and_the_reader_goes_on(prefix: str):
    node = Fragile()
    key = Key("summary", EURUSD, "1h")
    node.watching.add(key)
    node.holding.add(key)
    broker = RedisBroker(aioredis.Redis.from_url(REDIS_URL), node, VOCABULARY, prefix=prefix,
                         lease_ttl=5.0)
    await broker.start()
    try:
        async with asyncio.timeout(WAIT):
            await broker.leadership()
        assert await broker.publish(Batch(status=("degraded", "boom")))
        assert await broker.publish(Batch(values=[(key, {"Recommend.All": 0.7}, 2)]))
        await until(lambda: node.values().get(key) == {"Recommend.All": 0.7})
    finally:
        await broker.stop()
