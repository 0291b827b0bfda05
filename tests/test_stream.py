"""The /ws route through Quart's test app, against the real stand-in scanner in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError

from quartsig.access import accounts
from quartsig.app import create_app
from quartsig.domain.protocol import MAX_BATCH
from quartsig.domain.ratelimit import TokenBucket
from quartsig.web import stream
from tests.support.standin import Standin, create_standin_app, standin_state

KEY = Fernet.generate_key().decode()


@dataclass
class Stack:
    app: Any
    client: Any
    standin: Standin
    token: str

    def ws(self, path: str = "/ws", **kwargs: Any) -> Any:
        return self.client.websocket(path, **kwargs)


@contextlib.asynccontextmanager
async def standin_server() -> AsyncIterator[tuple[Standin, str]]:
    app = create_standin_app(seed=1)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield standin_state(app), f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def stack(tmp_path) -> AsyncIterator[Stack]:
    async with standin_server() as (standin, url):
        app = create_app(
            data_dir=tmp_path, scanner_url=url, interval=30.0, secret_keys=(KEY,),
            auth_timeout=0.5, max_subscriptions=3, ops_per_second=5.0,
        )
        async with app.test_app() as test_app:
            await accounts.add(42)
            await accounts.add(7)
            await accounts.disable(7)
            token = app.extensions["quartsig"].tokens.issue(42).token
            yield Stack(app, test_app.test_client(), standin, token)


async def receive(ws: Any, within: float = 5.0) -> list[dict[str, Any]]:
    async with asyncio.timeout(within):
        value = orjson.loads(await ws.receive())
    return value if isinstance(value, list) else [value]


async def receive_until(ws: Any, type: str, within: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            for message in await receive(ws, within):
                if message["type"] == type:
                    return message


async def _drain(ws: Any) -> None:
    async with asyncio.timeout(5):
        while True:
            await ws.receive()


async def closed_with(ws: Any) -> int:
    with pytest.raises(WebsocketDisconnectError) as caught:
        await _drain(ws)
    return caught.value.args[0]


async def authed(ws: Any, token: str) -> dict[str, Any]:
    await ws.send(orjson.dumps({"op": "auth", "token": token, "id": "a"}).decode())
    [message] = await receive(ws)
    return message


async def test_auth_by_first_frame_then_subscribe_gets_a_snapshot(stack: Stack):
    async with stack.ws() as ws:
        assert await authed(ws, stack.token) == {"type": "authed", "tg_id": 42, "id": "a"}
        await ws.send('{"op":"subscribe","symbol":"usdjpy","tf":"5m","profile":"summary","id":1}')
        messages = await receive(ws)
        assert messages[0] == {"type": "subscribed", "symbol": "FX_IDC:USDJPY", "tf": "5m",
                               "profile": "summary", "id": 1}
        snapshot = messages[1] if len(messages) > 1 else await receive_until(ws, "snapshot")
        expected = stack.standin.values("FX_IDC:USDJPY", "5m")["Recommend.All"]
        assert snapshot["data"]["Recommend.All"] == expected
        assert set(snapshot["data"]) == {"Recommend.All", "rec.all"}


async def test_auth_by_query_parameter(stack: Stack):
    async with stack.ws(f"/ws?token={stack.token}") as ws:
        [message] = await receive(ws)
        assert message["type"] == "authed"


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ('{"op":"auth","token":"garbage"}', 4401),
        ('{"op":"auth","token":""}', 4401),
        ('{"op":"subscribe","symbol":"USDJPY","tf":"1m"}', 4401),
        ("not json", 4401),
    ],
)
async def test_bad_auth_closes_with_4401(stack: Stack, first: str, code: int):
    async with stack.ws() as ws:
        await ws.send(first)
        assert await closed_with(ws) == code


async def test_disabled_and_unknown_accounts_close_with_4403(stack: Stack):
    tokens = stack.app.extensions["quartsig"].tokens
    for tg_id in (7, 99):
        async with stack.ws() as ws:
            await ws.send(orjson.dumps({"op": "auth", "token": tokens.issue(tg_id).token}))
            assert await closed_with(ws) == 4403


async def test_a_token_from_another_key_closes_with_4401(stack: Stack):
    foreign = Fernet(Fernet.generate_key()).encrypt(b"42").decode()
    async with stack.ws() as ws:
        await ws.send(orjson.dumps({"op": "auth", "token": foreign}).decode())
        assert await closed_with(ws) == 4401


async def test_no_auth_in_time_closes_with_4408(stack: Stack):
    async with stack.ws() as ws:
        assert await closed_with(ws) == 4408


async def test_foreign_origin_is_refused_before_the_upgrade(stack: Stack):
    async with stack.ws(headers={"Origin": "https://evil.example"}) as ws:
        with pytest.raises(WebsocketResponseError) as caught:
            await ws.receive()
    assert caught.value.response.status_code == 403


async def test_bad_frames_get_errors_and_the_connection_stays(stack: Stack):
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        cases = [
            ("{", "bad_json"),
            (b"\x00\x01", "bad_json"),
            ('{"op":"fly","id":3}', "bad_op"),
            ('{"op":"subscribe","symbol":"???","tf":"1m"}', "bad_symbol"),
            ('{"op":"subscribe","symbol":"USDJPY","tf":"2m"}', "bad_timeframe"),
        ]
        for frame, code in cases:
            await ws.send(frame)
            [error] = await receive(ws)
            assert error["type"] == "error" and error["code"] == code
        await ws.send('{"op":"ping","id":9}')
        assert await receive(ws) == [{"type": "pong", "id": 9}]


async def test_oversized_frame_closes_with_1009(stack: Stack):
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        await ws.send('{"op":"ping","pad":"' + "x" * 5000 + '"}')
        assert await closed_with(ws) == 1009


async def test_too_many_subscriptions(stack: Stack):
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        for tf in ("1m", "5m", "15m", "30m"):
            await ws.send(orjson.dumps({"op": "subscribe", "symbol": "EURUSD", "tf": tf,
                                        "profile": "summary", "id": tf}).decode())
        seen = {}
        async with asyncio.timeout(5):
            while len(seen) < 4:
                for message in await receive(ws):
                    if "id" in message:
                        seen[message["id"]] = message
        assert seen["30m"]["code"] == "too_many_subscriptions"
        assert {seen[tf]["type"] for tf in ("1m", "5m", "15m")} == {"subscribed"}


async def test_flooding_is_rate_limited(stack: Stack):
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        await ws.send(orjson.dumps([{"op": "ping", "id": n} for n in range(30)]).decode())
        replies = []
        async with asyncio.timeout(5):
            while len(replies) < 30:
                replies.extend(await receive(ws))
        types = [reply["type"] for reply in replies]
        assert types.count("pong") == 10  # burst of twice the 5/s rate
        assert types.count("error") == 20
        assert {reply["code"] for reply in replies if reply["type"] == "error"} == {"rate_limited"}


async def test_garbage_costs_a_token_and_a_client_that_keeps_sending_it_is_closed_1008(
    stack: Stack, monkeypatch: pytest.MonkeyPatch,
):
    """Binary frames, invalid JSON, empty arrays and oversized batches were refused without a
    token or a strike: one socket could make the server send thousands of errors a second. The
    bucket's clock stands still here, so what it counts does not depend on the machine."""
    monkeypatch.setattr(stream, "TokenBucket",
                        lambda rate, burst: TokenBucket(rate, burst, clock=lambda: 0.0))
    garbage = [b"\x00\x01", "{", "[]", "[" + ",".join(["{}"] * (MAX_BATCH + 1)) + "]"]
    replies: list[dict[str, Any]] = []
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        for n in range(stream.MAX_STRIKES):
            await ws.send(garbage[n % len(garbage)])
            replies.extend(await receive(ws))  # each answered, one at a time
        await ws.send(garbage[0])  # one refusal more: closed
        assert await closed_with(ws) == 1008
    codes = [reply["code"] for reply in replies]
    assert len(codes) == stream.MAX_STRIKES  # one reply each, then the close: no more
    burst = 2 * 5  # twice the stack's 5 ops a second
    assert set(codes[:burst]) == {"bad_json", "bad_op"}  # while tokens last
    assert set(codes[burst:]) == {"rate_limited"}  # then each costs a token it does not have


async def test_unknown_symbol_is_reported_and_dropped(stack: Stack):
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        await ws.send('{"op":"subscribe","symbol":"FX_IDC:NOPENOPE","tf":"1m","profile":"summary"}')
        error = await receive_until(ws, "error")
        assert error["code"] == "unknown_symbol" and error["symbol"] == "FX_IDC:NOPENOPE"
        state = stack.app.extensions["quartsig"]
        assert state.hub.demand() == set()
        await ws.send('{"op":"subscribe","symbol":"FX_IDC:NOPENOPE","tf":"5m","id":2}')
        [again] = await receive(ws)
        assert again["code"] == "unknown_symbol" and again["id"] == 2


async def test_updates_carry_only_changed_keys_and_rebuild_the_state(stack: Stack):
    server = stack.app.extensions["quartsig"]
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        await ws.send('{"op":"subscribe","symbol":"EURUSD","tf":"1h"}')
        snapshot = await receive_until(ws, "snapshot")
        state = dict(snapshot["data"])
        stack.standin.set_values("FX_IDC:EURUSD", "1h", {"RSI": 12.5, "RSI[1]": 11.0})
        await server.collector.tick(server.hub.demand(), full=True)
        update = await receive_until(ws, "update")
        assert update["data"]["RSI"] == 12.5
        assert "Pivot.M.Classic.R1" not in update["data"] or (
            update["data"]["Pivot.M.Classic.R1"] != state["Pivot.M.Classic.R1"]
        )
        state.update(update["data"])
        assert state == server.hub.entries[next(iter(server.hub.demand()))].data


async def test_unsubscribed_key_leaves_the_next_scanner_request(stack: Stack):
    state = stack.app.extensions["quartsig"]
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        await ws.send('{"op":"subscribe","symbol":"GBPUSD","tf":"1m","profile":"summary"}')
        await receive_until(ws, "snapshot")
        await ws.send('{"op":"unsubscribe","symbol":"GBPUSD","tf":"1m","profile":"summary"}')
        await receive_until(ws, "unsubscribed")
        stack.standin.clear_log()
        await state.collector.tick(state.hub.demand(), full=True)
        assert all("FX_IDC:GBPUSD" not in r.tickers for r in stack.standin.log)


async def test_shutdown_closes_clients_with_1001(stack: Stack):
    state = stack.app.extensions["quartsig"]
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        state.close_all()
        assert await closed_with(ws) == 1001


async def test_disabling_an_account_closes_its_connections(stack: Stack):
    state = stack.app.extensions["quartsig"]
    async with stack.ws() as ws:
        await authed(ws, stack.token)
        await accounts.disable(42)
        await state.check_accounts()
        assert await closed_with(ws) == 4403
