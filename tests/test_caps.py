"""Connection caps: the pure counting and address rules, then the /ws route under them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError

from quartsig.access import accounts
from quartsig.access.admission import Caps, Refused
from quartsig.app import create_app
from quartsig.config import ConfigError, Settings
from quartsig.domain.addresses import client_of, parse_networks
from tests.test_stream import KEY, authed, closed_with, standin_server

PUBLIC = "1.2.3.4"  # is_global; the documentation ranges (203.0.113.0/24, ...) are not
OTHER = "5.6.7.8"

# -- addresses ------------------------------------------------------------------------------


def test_without_trusted_proxies_the_peer_is_the_client_and_forwarded_for_is_ignored():
    client = client_of(PUBLIC, ["9.9.9.9"], ())
    assert (client.address, client.capped) == (PUBLIC, True)


def test_a_private_peer_is_not_capped_per_address():
    """A PaaS router or a local reverse proxy: every user would share its one budget."""
    for peer in ("127.0.0.1", "10.1.2.3", "100.64.0.7", "::1", "fd00::1", None):
        assert not client_of(peer, [], ()).capped, peer


def test_a_trusted_proxy_gives_the_right_most_untrusted_hop():
    proxies = parse_networks("10.0.0.0/8, 127.0.0.1")
    # The client wrote "6.6.6.6" itself; the edge proxy appended PUBLIC; an inner proxy 10.0.0.2.
    client = client_of("127.0.0.1", ["6.6.6.6, " + PUBLIC, "10.0.0.2"], proxies)
    assert (client.address, client.capped) == (PUBLIC, True)


def test_forwarded_for_from_an_untrusted_peer_is_not_believed():
    proxies = parse_networks("10.0.0.0/8")
    assert client_of(OTHER, [PUBLIC], proxies).address == OTHER


def test_a_private_address_vouched_for_by_a_trusted_proxy_is_capped():
    proxies = parse_networks("127.0.0.1")
    client = client_of("127.0.0.1", ["192.168.1.20"], proxies)
    assert (client.address, client.capped) == ("192.168.1.20", True)


def test_no_or_garbage_forwarded_for_counts_under_the_proxy():
    proxies = parse_networks("127.0.0.1")
    assert client_of("127.0.0.1", [], proxies) == client_of("127.0.0.1", ["nonsense"], proxies)
    assert client_of("127.0.0.1", [], proxies).address == "127.0.0.1"


def test_ports_brackets_and_mapped_addresses_are_normalised():
    proxies = parse_networks("127.0.0.1")
    assert client_of("127.0.0.1", [f"{PUBLIC}:5000"], proxies).address == PUBLIC
    assert client_of("127.0.0.1", ["[2606:4700::1]:443"], proxies).address == "2606:4700::1"
    assert client_of(f"::ffff:{PUBLIC}", [], ()).address == PUBLIC


def test_trusted_proxies_setting_is_parsed_and_checked():
    settings = Settings.from_env({"QUARTSIG_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"})
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32"]
    with pytest.raises(ConfigError, match="QUARTSIG_TRUSTED_PROXIES"):
        Settings.from_env({"QUARTSIG_TRUSTED_PROXIES": "10.0.0.0/8, example.com"})
    with pytest.raises(ConfigError, match="QUARTSIG_MAX_CONNECTIONS_PER_ACCOUNT"):
        Settings.from_env({"QUARTSIG_MAX_CONNECTIONS_PER_ACCOUNT": "-1"})


# -- counting -------------------------------------------------------------------------------


def test_caps_count_pending_sockets_and_release_once():
    refused: list[str] = []
    caps = Caps(total=3, per_address=2, per_account=1, on_refused=refused.append)
    client = client_of(PUBLIC, [], ())
    first, second = caps.enter(client), caps.enter(client)
    with pytest.raises(Refused) as caught:
        caps.enter(client)
    assert (caught.value.cap, caught.value.status) == ("address", 429)
    third = caps.enter(client_of(OTHER, [], ()))
    with pytest.raises(Refused) as caught:
        caps.enter(client_of("9.9.9.9", [], ()))
    assert (caught.value.cap, caught.value.status) == ("total", 503)
    assert (caps.open, caps.pending) == (3, 3)
    first.authenticated(42)
    with pytest.raises(Refused) as caught:
        second.authenticated(42)
    assert caught.value.cap == "account"
    assert (caps.open, caps.pending, caps.accounts) == (3, 2, {42: 1})
    for ticket in (first, second, third, first):  # twice is harmless
        ticket.release()
    assert (caps.open, caps.pending, caps.addresses, caps.accounts) == (0, 0, {}, {})
    assert refused == ["address", "total", "account"]


def test_an_ipv6_64_is_one_address_for_the_cap():
    """Issue 20, point 5: each /128 had its own 64 sockets, and a home line holds a /64."""
    caps = Caps(total=0, per_address=2, per_account=0)
    for address in ("2606:4700:1:2::1", "2606:4700:1:2:ffff:1:2:3"):
        caps.enter(client_of(address, [], ()))
    with pytest.raises(Refused) as caught:
        caps.enter(client_of("2606:4700:1:2::99", [], ()))
    assert caught.value.cap == "address"
    caps.enter(client_of("2606:4700:1:3::1", [], ()))  # the next /64: someone else
    assert caps.addresses == {"2606:4700:1:2::/64": 2, "2606:4700:1:3::/64": 1}
    assert client_of(PUBLIC, [], ()).group == PUBLIC  # IPv4: the address itself


def test_unauthenticated_sockets_get_their_own_share_of_the_total():
    """Sockets that never authenticate, from however many addresses, fill only their share:
    an authenticated socket's room is not theirs to take."""
    refused: list[str] = []
    caps = Caps(total=4, per_address=0, per_account=0, pending_share=2,
                on_refused=refused.append)
    waiting = [caps.enter(client_of(f"1.2.3.{n}", [], ())) for n in (1, 2)]
    with pytest.raises(Refused) as caught:
        caps.enter(client_of("1.2.3.3", [], ()))
    assert (caught.value.cap, caught.value.status) == ("pending", 503)
    waiting[0].authenticated(42)  # it leaves the share: room for one more to authenticate
    caps.enter(client_of("1.2.3.3", [], ()))
    assert (caps.open, caps.pending, refused) == (3, 2, ["pending"])


def test_zero_turns_a_cap_off():
    caps = Caps(total=0, per_address=0, per_account=0)
    tickets = [caps.enter(client_of(PUBLIC, [], ())) for _ in range(500)]
    for ticket in tickets:
        ticket.authenticated(42)
    assert caps.open == 500 and caps.addresses == {}


# -- through the route ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def served(tmp_path: Any, **overrides: Any) -> AsyncIterator[tuple[Any, Any, str]]:
    async with standin_server() as (_, url):
        app = create_app(data_dir=tmp_path, scanner_url=url, interval=30.0, secret_keys=(KEY,),
                         auth_timeout=60.0, **overrides)
        async with app.test_app() as test_app:
            await accounts.add(42)
            token = app.extensions["quartsig"].tokens.issue(42).token
            yield app, test_app.test_client(), token


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 (nothing to wait on: the counts are plain ints)
            await asyncio.sleep(0.01)


def from_address(client: Any, address: str, headers: dict[str, str] | None = None) -> Any:
    return client.websocket("/ws", headers=headers, scope_base={"client": (address, 40000)})


async def refused_with(ws: Any) -> int:
    with pytest.raises(WebsocketResponseError) as caught:
        async with asyncio.timeout(30):
            await ws.receive()
    return caught.value.response.status_code


async def test_300_sockets_with_one_token_from_one_address_are_not_all_admitted(tmp_path):
    """Finding 2: all 300 were admitted; the op rate limit is per socket, so more sockets
    multiplied it. Now 20 authenticate (the account cap); the rest are refused or closed."""
    async with served(tmp_path) as (app, client, token):
        state = app.extensions["quartsig"]
        outcomes: dict[object, int] = {}
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(300):
                ws = await stack.enter_async_context(from_address(client, PUBLIC))
                try:
                    reply = await authed(ws, token)
                except WebsocketResponseError as error:
                    outcome: object = error.response.status_code
                except WebsocketDisconnectError as error:
                    outcome = error.args[0]
                else:
                    outcome = reply["type"]
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            # The rest: 4429, or 429 once sockets in their closing handshake (the test client
            # never answers a close frame, so each waits out its 2 s) fill the address's 64.
            assert outcomes["authed"] == 20
            assert set(outcomes) <= {"authed", 4429, 429} and sum(outcomes.values()) == 300
            assert state.caps.accounts == {42: 20}
        await until(lambda: state.caps.open == 0)
        refused = state.metrics.refused
        assert refused.labels(cap="account")._value.get() == outcomes.get(4429, 0)
        assert refused.labels(cap="address")._value.get() == outcomes.get(429, 0)


async def test_unauthenticated_sockets_fill_their_address_budget_not_everyones(tmp_path):
    async with served(tmp_path, max_connections_per_address=5) as (app, client, token):
        state = app.extensions["quartsig"]
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(5):  # opened, never authenticated
                await stack.enter_async_context(from_address(client, PUBLIC))
            await until(lambda: state.caps.pending == 5)
            async with from_address(client, PUBLIC) as ws:
                assert await refused_with(ws) == 429
            async with from_address(client, OTHER) as ws:  # another address is not affected
                assert (await authed(ws, token))["type"] == "authed"
            assert state.metrics.refused.labels(cap="address")._value.get() == 1
        await until(lambda: state.caps.open == 0)
        async with from_address(client, PUBLIC) as ws:  # their budget comes back as they go
            assert (await authed(ws, token))["type"] == "authed"


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(tmp_path):
    async with served(tmp_path, max_connections_per_address=2,
                      trusted_proxies=parse_networks("10.0.0.0/8")) as (app, client, token):
        state = app.extensions["quartsig"]

        def via_router(address: str) -> Any:
            # The client's own X-Forwarded-For ("6.6.6.6") is not believed, the router's hop is.
            return from_address(client, "10.0.0.9", {"X-Forwarded-For": f"6.6.6.6, {address}"})

        async with contextlib.AsyncExitStack() as stack:
            for _ in range(2):
                await stack.enter_async_context(via_router(PUBLIC))
            await until(lambda: state.caps.pending == 2)
            async with via_router(PUBLIC) as ws:
                assert await refused_with(ws) == 429
            async with via_router(OTHER) as ws:
                assert (await authed(ws, token))["type"] == "authed"
            assert state.caps.addresses == {PUBLIC: 2}


async def test_a_paas_router_without_trusted_proxies_does_not_lock_users_out(tmp_path):
    """Every socket from one private router address: only the total and account caps apply."""
    async with served(tmp_path, max_connections_per_address=2) as (app, client, token):
        state = app.extensions["quartsig"]
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(6):
                ws = await stack.enter_async_context(from_address(client, "10.0.0.9"))
                assert (await authed(ws, token))["type"] == "authed"
            assert state.caps.addresses == {}


async def test_the_total_cap_counts_sockets_not_yet_authenticated(tmp_path):
    async with served(tmp_path, max_connections=3) as (app, client, token):
        state = app.extensions["quartsig"]
        async with contextlib.AsyncExitStack() as stack:
            for address in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):
                await stack.enter_async_context(from_address(client, address))
            await until(lambda: state.caps.open == 3)
            async with from_address(client, "4.4.4.4") as ws:
                assert await refused_with(ws) == 503
        await until(lambda: state.caps.open == 0)
        async with from_address(client, "4.4.4.4") as ws:
            assert (await authed(ws, token))["type"] == "authed"


async def test_an_account_over_its_cap_is_closed_4429_and_gets_in_when_one_leaves(tmp_path):
    async with served(tmp_path, max_connections_per_account=2) as (app, client, token):
        state = app.extensions["quartsig"]
        async with client.websocket("/ws") as first:
            await authed(first, token)
            async with client.websocket("/ws") as second:
                await authed(second, token)
                async with client.websocket("/ws") as third:
                    await third.send(f'{{"op":"auth","token":"{token}"}}')
                    assert await closed_with(third) == 4429
            await until(lambda: state.caps.accounts == {42: 1})
            async with client.websocket("/ws") as again:
                assert (await authed(again, token))["type"] == "authed"
