"""Live sessions: a token's expiry closes its socket; a disabled account is closed and stays out,
whoever disabled it and whatever ``updated_at`` says. Accounts on SQLite and (when
QUARTSIG_TEST_POSTGRES_URL is set) PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from quart.testing.connections import WebsocketDisconnectError

from quartsig.access import accounts
from quartsig.access.expiries import Expiries
from quartsig.access.tokens import ExpiredToken, TokenAuthority
from quartsig.app import create_app
from tests.support.clocks import HandClock
from tests.test_accounts import database_url  # noqa: F401 (the SQLite/PostgreSQL fixture)
from tests.test_stream import KEY, authed, closed_with, standin_server

# -- the heap -------------------------------------------------------------------------------


def test_due_returns_each_session_once_in_expiry_order_and_never_one_removed():
    sessions: Expiries[str] = Expiries()
    sessions.add("late", 30.0)
    sessions.add("early", 10.0)
    sessions.add("gone", 5.0)
    sessions.remove("gone")
    assert sessions.due(10.0) == []  # expiry is exclusive, as Fernet's
    assert sessions.due(10.5) == ["early"]
    assert sessions.due(10.5) == []
    assert sessions.due(1e9) == ["late"]
    assert len(sessions) == 0


def test_a_heap_of_departed_sessions_is_rebuilt_not_kept():
    sessions: Expiries[int] = Expiries()
    for n in range(10_000):  # a day's churn of connections that left long before expiry
        sessions.add(n, 86_400.0 + n)
        sessions.remove(n)
    assert sessions.entries < 200
    sessions.add(-1, 1.0)
    assert sessions.due(2.0) == [-1]


def test_the_token_authority_says_when_a_token_expires():
    now = [1_000_000.0]
    tokens = TokenAuthority([KEY], 60, clock=lambda: now[0])
    token = tokens.issue(42).token
    grant = tokens.check(token)
    assert (grant.tg_id, grant.expires_at) == (42, 1_000_060.0)
    now[0] = 1_000_061.0  # Fernet counts whole seconds
    with pytest.raises(ExpiredToken):
        tokens.check(token)


# -- through the route ----------------------------------------------------------------------




@contextlib.asynccontextmanager
async def served(tmp_path: Any, database_url: str) -> AsyncIterator[tuple[Any, Any, HandClock]]:  # noqa: F811
    async with standin_server() as (_, url):
        app = create_app(data_dir=tmp_path, database_url=database_url, scanner_url=url,
                         interval=30.0, secret_keys=(KEY,), auth_timeout=30.0)
        clock = HandClock(datetime.now(UTC).timestamp())
        state = app.extensions["quartsig"]
        state.tokens = TokenAuthority([KEY], 5, clock=clock)  # TOKEN_TTL=5, as in finding 4
        async with app.test_app() as test_app:
            await accounts.add(42)
            yield app, test_app.test_client(), clock


async def test_a_connected_socket_is_closed_4401_when_its_token_expires(tmp_path, database_url):  # noqa: F811
    """Finding 4: with TOKEN_TTL=5 a socket kept receiving updates at 16 s."""
    async with served(tmp_path, database_url) as (app, client, clock):
        state = app.extensions["quartsig"]
        token = state.tokens.issue(42).token
        async with client.websocket("/ws") as ws:
            assert (await authed(ws, token))["type"] == "authed"
            clock.now += 4
            assert state.expire_sessions() == 0
            await ws.send('{"op":"ping","id":1}')
            assert orjson.loads(await ws.receive()) == {"type": "pong", "id": 1}
            clock.now += 2  # past the 5 s TTL: the once-a-second loop closes it
            assert await closed_with_in(ws, 30) == 4401
        assert len(state.expiries) == 0
        assert state.metrics.expired._value.get() == 1


async def closed_with_in(ws: Any, within: float) -> int:
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.receive()
    except WebsocketDisconnectError as closed:
        return int(closed.args[0])


async def _disable_by_sql_with_a_stale_stamp(tg_id: int) -> None:
    """An operator's UPDATE: no CLI, no app, and an ``updated_at`` from a day ago."""
    connection = accounts.Account._meta.db
    postgres = connection.capabilities.dialect == "postgres"
    stale = datetime.now(UTC) - timedelta(days=1)
    await connection.execute_query(
        "UPDATE account SET active = false, updated_at = $1 WHERE tg_id = $2" if postgres
        else "UPDATE account SET active = 0, updated_at = ? WHERE tg_id = ?",
        [stale if postgres else str(stale), tg_id],
    )


async def test_an_account_disabled_by_plain_sql_is_closed_within_one_check_and_stays_out(
    tmp_path, database_url  # noqa: F811
):
    """Finding 5: revocation read ``updated_at`` (the writer's clock), and the admitted cache let
    such an account reconnect for up to 5 minutes."""
    async with served(tmp_path, database_url) as (app, client, _):
        state = app.extensions["quartsig"]
        await accounts.add(43)
        token, other = state.tokens.issue(42).token, state.tokens.issue(43).token
        async with client.websocket("/ws") as ws:  # 43 connects once and leaves: remembered
            await authed(ws, other)
        async with client.websocket("/ws") as ws:
            await authed(ws, token)
            assert 42 in state.gate.admitted and 43 in state.gate.admitted
            await _disable_by_sql_with_a_stale_stamp(42)
            await _disable_by_sql_with_a_stale_stamp(43)
            assert await state.check_accounts() == 1
            assert await closed_with(ws) == 4403
        for again in (token, other):  # neither gets back in from the remembered admissions
            async with client.websocket("/ws") as ws:
                await ws.send(orjson.dumps({"op": "auth", "token": again}).decode())
                assert await closed_with(ws) == 4403


async def test_disabling_in_this_process_closes_and_forgets_at_once(tmp_path, database_url):  # noqa: F811
    async with served(tmp_path, database_url) as (app, client, _):
        state = app.extensions["quartsig"]
        token = state.tokens.issue(42).token
        async with client.websocket("/ws") as ws:
            await authed(ws, token)
            assert await state.disable_account(42) == 1  # no check, no tick
            assert 42 not in state.gate.admitted
            assert await closed_with(ws) == 4403
        async with client.websocket("/ws") as ws:
            await ws.send(orjson.dumps({"op": "auth", "token": token}).decode())
            assert await closed_with(ws) == 4403
