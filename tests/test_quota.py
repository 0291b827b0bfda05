"""Issue 20, point 4: the per-account connection cap and new-key quota hold across a cluster
(counts in Redis), not per node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from quartsig.access import accounts
from quartsig.app import create_app
from quartsig.cluster.quota import NewKeys, RedisQuota
from quartsig.domain.model import Key
from tests.support.redisdb import REDIS_URL
from tests.test_stream import KEY, Stack, authed, closed_with, receive, standin_server


def test_other_nodes_count_is_the_clusters_beyond_what_this_node_pushed():
    keys = NewKeys()
    keys.note("a", 1.0)
    keys.note("b", 2.0)
    keys.note("a", 3.0)  # counted once
    assert keys.elsewhere() == 0
    keys.pending.clear()  # pushed ...
    keys.cluster = 5  # ... and the cluster counts 5 distinct: 3 are others'
    assert keys.elsewhere() == 3
    keys.trim(1.5)
    assert set(keys.mine) == {"b"}


@contextlib.asynccontextmanager
async def nodes(prefix: str, count: int, **options: Any) -> AsyncIterator[list[RedisQuota]]:
    quotas = [RedisQuota(aioredis.Redis.from_url(REDIS_URL), prefix=prefix, **options)
              for _ in range(count)]
    try:
        yield quotas
    finally:
        for quota in quotas:
            await quota.stop()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 (another node's count: polling is simplest)
            await asyncio.sleep(0.05)


async def test_an_accounts_sockets_are_capped_over_every_node(prefix: str):
    async with nodes(prefix, 2, per_account=3) as (a, b):
        seats = [await a.join(42), await a.join(42), await b.join(42)]
        assert None not in seats
        assert await a.join(42) is None and await b.join(42) is None
        assert await b.join(43) is not None  # another account's sockets are its own
        a.leave(seats[0])
        await a._flush_left()
        assert await b.join(42) is not None


async def test_a_dead_nodes_sockets_lapse(prefix: str):
    async with nodes(prefix, 2, per_account=1, ttl=0.5) as (dead, alive):
        assert await dead.join(42) is not None  # and it never renews: it died
        assert await alive.join(42) is None

        async def joined() -> bool:
            return await alive.join(42) is not None

        await eventually(joined)


async def test_new_keys_are_counted_over_every_node(prefix: str):
    key = [Key("summary", f"FX_IDC:ZQ{n}", "1h") for n in range(6)]
    async with nodes(prefix, 2) as (a, b):
        for k in key[:3]:
            a.noted(42, k)
        await a._sync_keys()
        b.noted(42, key[3])
        await b._sync_keys()
        assert b.over(42, key[4], 4)  # 3 asked for through a, 1 through b
        assert not b.over(42, key[3], 4)  # counted already: asking again is free
        assert not b.over(42, key[4], 5)
        await a._sync_keys()
        assert a.over(42, key[5], 4)


async def test_the_keys_an_account_holds_on_other_live_nodes_are_counted(prefix: str):
    async with (nodes(prefix, 1, held=lambda account: 3, ttl=0.5) as [dying],
                nodes(prefix, 1, held=lambda account: 1) as [alive]):
        assert await dying.join(42) is not None and await alive.join(42) is not None
        await dying._renew()
        await alive._renew()
        await dying._renew()
        assert (dying.keys_elsewhere(42), alive.keys_elsewhere(42)) == (1, 3)
        assert alive.keys_elsewhere(43) == 0

        async def forgotten() -> bool:  # dying never renews its socket: it lapses
            await alive._renew()
            return alive.keys_elsewhere(42) == 0

        await eventually(forgotten)


# --- through /ws: an app and another node sharing one Redis -------------------------------------


@contextlib.asynccontextmanager
async def app_and_node(tmp_path: Any, prefix: str,
                       **overrides: Any) -> AsyncIterator[tuple[Stack, RedisQuota]]:
    async with (standin_server() as (standin, url), nodes(prefix, 1) as [other]):
        app = create_app(data_dir=tmp_path, scanner_url=url, interval=300.0, secret_keys=(KEY,),
                         redis_url=REDIS_URL, redis_prefix=prefix, **overrides)
        async with app.test_app() as test_app:
            await accounts.add(42)
            token = app.extensions["quartsig"].tokens.issue(42).token
            yield Stack(app, test_app.test_client(), standin, token), other


async def test_the_per_account_socket_cap_holds_across_nodes(tmp_path: Any, prefix: str):
    async with app_and_node(tmp_path, prefix, max_connections_per_account=2) as (stack, other):
        assert await other.join(42) is not None  # a tab of the account's on another node
        async with stack.ws() as a, stack.ws() as b:
            assert (await authed(a, stack.token))["type"] == "authed"
            await b.send(orjson.dumps({"op": "auth", "token": stack.token}).decode())
            assert await closed_with(b) == 4429  # this node counts 1: the cluster 2


async def test_the_new_key_quota_holds_across_nodes(tmp_path: Any, prefix: str):
    async with (app_and_node(tmp_path, prefix, new_keys_per_minute=3,
                             ops_per_second=1000.0) as (stack, other), stack.ws() as ws):
        await authed(ws, stack.token)
        for n in range(3):  # the quota spent through another node
            other.noted(42, Key("summary", f"FX_IDC:ZQ{n}", "1h"))
        await other._sync_keys()
        quota = stack.app.extensions["quartsig"].quota

        async def others_counted() -> bool:
            return bool(quota.over(42, Key("summary", "FX_IDC:ZQ9", "1h"), 3))

        await eventually(others_counted)  # this node's loop reads the cluster's count
        await ws.send(orjson.dumps({"op": "subscribe", "symbol": "FX_IDC:ZQ9", "tf": "1h",
                                    "profile": "summary", "id": 9}).decode())
        async with asyncio.timeout(30):
            while not (replies := [m for m in await receive(ws, 30) if m.get("id") == 9]):
                pass
        assert replies[0]["code"] == "quota_exceeded"


async def test_the_key_share_counts_what_other_nodes_hold(tmp_path: Any, prefix: str):
    async with (app_and_node(tmp_path, prefix, max_keys_per_account=3) as (stack, other),
                stack.ws() as ws):
        other.held = lambda account: 2  # two keys of the account's on another node
        assert await other.join(42) is not None
        await other._renew()
        await authed(ws, stack.token)
        quota = stack.app.extensions["quartsig"].quota

        async def others_read() -> bool:
            return bool(quota.keys_elsewhere(42) == 2)

        await eventually(others_read)

        async def reply(tf: str) -> dict[str, Any]:
            await ws.send(orjson.dumps({"op": "subscribe", "symbol": "FX_IDC:EURUSD", "tf": tf,
                                        "profile": "summary", "id": tf}).decode())
            async with asyncio.timeout(30):
                while True:
                    for message in await receive(ws, 30):
                        if message.get("id") == tf:
                            return message

        assert (await reply("1h"))["type"] == "subscribed"
        assert (await reply("4h"))["code"] == "account_key_limit"
