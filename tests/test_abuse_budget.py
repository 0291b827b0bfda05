"""Issue 14, finding 1 (upstream amplification): what one account's churn of made-up tickers
costs upstream, counted at the stand-in, through the real ``/ws`` route, hub and collector.

The finding: two sockets of one account, each subscribing to 7 made-up tickers every 0.6 s for
20 s, drove 462 upstream requests. Here the 0.6 s steps are a hand-moved clock (the per-account
quota's), the rounds run as fast as the server answers, and the full tick that 20 s would have
held is run once at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from quartsig.access import accounts
from quartsig.app import create_app
from quartsig.domain.model import Key
from tests.support.clocks import HandClock
from tests.support.redisdb import REDIS_URL
from tests.test_broker_redis import cluster, until
from tests.test_stream import KEY, Stack, authed, receive, standin_server

ROUNDS = 34  # 20 s / 0.6 s
PER_ROUND = 7




@pytest.fixture
async def stack(tmp_path: Any) -> AsyncIterator[Stack]:
    async with standin_server() as (standin, url):
        app = create_app(
            data_dir=tmp_path, scanner_url=url, interval=300.0, secret_keys=(KEY,),
            max_subscriptions=1000, ops_per_second=1000.0,  # the op rate limit is not the point
        )
        async with app.test_app() as test_app:
            await accounts.add(42)
            await accounts.add(43)
            tokens = app.extensions["quartsig"].tokens
            yield Stack(app, test_app.test_client(), standin, tokens.issue(42).token)


async def settle(ws: Any, ids: set[str], symbols: set[str], seen: dict[str, str]) -> None:
    """Read until each subscribe in ``ids`` was refused, or its symbol rejected or deferred."""
    waiting_ids, waiting_symbols = set(ids), set(symbols)
    async with asyncio.timeout(30):
        while waiting_ids or waiting_symbols:
            for message in await receive(ws, 30):
                kind = message["type"]
                if kind == "subscribed":
                    waiting_ids.discard(message["id"])
                elif kind == "error" and message.get("id") in waiting_ids:
                    waiting_ids.discard(message["id"])
                    waiting_symbols.discard(symbol_of(message["id"]))
                    seen[symbol_of(message["id"])] = message["code"]
                elif kind in ("error", "notice") and "symbol" in message:
                    waiting_symbols.discard(message["symbol"])
                    seen[message["symbol"]] = message["code"]


def symbol_of(id: str) -> str:
    return f"FX_IDC:{id}"


def frame(round: int, socket: str) -> tuple[str, set[str]]:
    ids = {f"ZQ{round}{socket}{n}" for n in range(PER_ROUND)}
    ops = [{"op": "subscribe", "symbol": symbol_of(id), "tf": "1h", "profile": "summary",
            "id": id} for id in sorted(ids)]
    return orjson.dumps(ops).decode(), ids


async def test_one_accounts_made_up_tickers_cost_a_handful_of_requests(stack: Stack):
    state = stack.app.extensions["quartsig"]
    clock = HandClock()
    state.new_keys.clock = clock
    seen: dict[str, str] = {}
    async with stack.ws() as a, stack.ws() as b:
        await authed(a, stack.token)
        await authed(b, stack.token)
        before = len(stack.standin.log)
        for round in range(ROUNDS):
            frames = {ws: frame(round, name) for ws, name in ((a, "A"), (b, "B"))}
            for ws, (text, _) in frames.items():
                await ws.send(text)
            for ws, (_, ids) in frames.items():
                await settle(ws, ids, {symbol_of(id) for id in ids}, seen)
            clock.now += 0.6
        early = len(stack.standin.log) - before
        # The full tick those 20 s would have held: every deferred made-up ticker, grouped.
        await state.collector.tick(await state.broker.demand(), full=True)
        spent = len(stack.standin.log) - before
    codes = sorted(set(seen.values()))
    assert codes == ["deferred", "quota_exceeded", "unknown_symbol"], codes
    assert list(seen.values()).count("unknown_symbol") == 60  # the early ones
    assert list(seen.values()).count("quota_exceeded") == 2 * ROUNDS * PER_ROUND - 300
    assert early <= 8 and spent <= early + 1, (early, spent)  # 462 before the budgets
    assert state.hub.demand() == set()  # the tick rejected every deferred one


async def test_an_honest_user_of_another_account_is_not_touched(stack: Stack):
    state = stack.app.extensions["quartsig"]
    state.new_keys.clock = HandClock()
    other = state.tokens.issue(43).token
    async with stack.ws() as noisy, stack.ws() as honest:
        await authed(noisy, stack.token)
        await authed(honest, other)
        for round in range(45):  # 315 new keys: past the quota
            text, ids = frame(round, "N")
            await noisy.send(text)
            await settle(noisy, ids, {symbol_of(id) for id in ids}, {})
        await honest.send(orjson.dumps({"op": "subscribe", "symbol": "FX_IDC:EURUSD",
                                        "tf": "1h", "profile": "summary", "id": 1}).decode())
        kinds: list[str] = []
        async with asyncio.timeout(30):
            while "snapshot" not in kinds:
                kinds.extend(m["type"] for m in await receive(honest, 30))
        assert kinds == ["subscribed", "snapshot"]


async def test_the_node_caps_distinct_keys(stack: Stack):
    state = stack.app.extensions["quartsig"]
    state.settings = state.settings.replace(max_keys=2)
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        ops = [{"op": "subscribe", "symbol": "FX_IDC:EURUSD", "tf": tf, "profile": "summary",
                "id": tf} for tf in ("1h", "4h", "1d")]
        await ws.send(orjson.dumps(ops).decode())
        replies: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(30):
            while len(replies) < 3:
                replies.update({m["id"]: m for m in await receive(ws, 30) if "id" in m})
        assert [replies[tf]["type"] for tf in ("1h", "4h")] == ["subscribed", "subscribed"]
        assert replies["1d"]["code"] == "key_limit"


async def test_a_cluster_caps_the_distinct_keys_of_all_its_nodes(tmp_path: Any, prefix: str):
    """Every node's keys cost the one collector's requests: the cap counts the cluster's."""
    async with standin_server() as (standin, url):
        app = create_app(data_dir=tmp_path, scanner_url=url, interval=300.0, secret_keys=(KEY,),
                         redis_url=REDIS_URL, redis_prefix=prefix, max_keys=3)
        async with app.test_app() as test_app, cluster(prefix, 1, interval=300.0) as (nodes, _):
            other = nodes[0]  # another node of the cluster, two keys of its own
            other.watch(*(Key("summary", "FX_IDC:EURUSD", tf) for tf in ("1h", "4h")))
            await until(lambda: other.broker.cluster_keys() == 2)
            await accounts.add(42)
            state = app.extensions["quartsig"]
            stack = Stack(app, test_app.test_client(), standin, state.tokens.issue(42).token)
            async with stack.ws() as ws:
                await authed(ws, stack.token)
                replies = await subscribe(ws, "1d")  # the third key of the cluster
                assert replies["1d"]["type"] == "subscribed"
                await until(lambda: state.broker.cluster_keys() == 3)
                replies = await subscribe(ws, "1W")
                assert replies["1W"]["code"] == "key_limit"
                assert state.hub.demand() == {Key("summary", "FX_IDC:EURUSD", "1d")}


async def subscribe(ws: Any, tf: str) -> dict[str, dict[str, Any]]:
    await ws.send(orjson.dumps({"op": "subscribe", "symbol": "FX_IDC:EURUSD", "tf": tf,
                                "profile": "summary", "id": tf}).decode())
    replies: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(30):
        while tf not in replies:
            replies.update({m["id"]: m for m in await receive(ws, 30) if "id" in m})
    return replies
