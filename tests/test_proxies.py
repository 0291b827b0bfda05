"""Proxy slots through a real SOCKS5 proxy (microsocks): the bytes cross it, failures fail over.

Each microsocks binds its outgoing connections to its own loopback address
(127.0.0.2, 127.0.0.3, ...), so the stand-in's request log says which proxy
carried each request; microsocks' own log line confirms the connection.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp_socks import ProxyConnector, ProxyType

from quartsig.domain.model import ScanRequest
from quartsig.upstream.proxies import (
    ProxyPool,
    ProxyURLError,
    cooldown_for,
    make_connector,
    parse_proxy,
    redact,
)
from quartsig.upstream.scanner import ScannerClient
from tests.support.net import free_port
from tests.support.scanning import (
    Microsocks,
    needs_microsocks,
    running_microsocks,
    standin_fixture,  # noqa: F401
)

REQUEST = ScanRequest("forex", ("FX_IDC:USDJPY", "FX_IDC:EURUSD"), ("close", "RSI|5"))
SECRET = "s3cr3t-pa55"
FAST = (0.01, 0.01, 0.01)


def peers(standin) -> list[str]:
    return [entry.peer.rsplit(":", 1)[0] for entry in standin.state.log]


# --- pure parts -------------------------------------------------------------------------------


def test_parse_proxy_schemes_and_credentials():
    spec = parse_proxy("socks5h://us%40er:p%3Ass@tor.local:9050")
    assert (spec.scheme, spec.host, spec.port) == ("socks5h", "tor.local", 9050)
    assert (spec.username, spec.password) == ("us@er", "p:ss")
    assert spec.proxy_type is ProxyType.SOCKS5
    assert spec.rdns is True
    assert parse_proxy("socks5://127.0.0.1:1080").rdns is False
    assert parse_proxy("http://127.0.0.1:3128").proxy_type is ProxyType.HTTP
    assert "p:ss" not in repr(spec)
    assert "us@er" not in repr(spec)


@pytest.mark.parametrize("url", [
    f"ftp://user:{SECRET}@host:1", f"socks5://user:{SECRET}@host", f"socks5://user:{SECRET}@:1",
    f"socks5://user:{SECRET}@host:notaport",
])
def test_bad_proxy_urls_fail_without_echoing_them(url):
    with pytest.raises(ProxyURLError) as caught:
        parse_proxy(url)
    assert SECRET not in str(caught.value)
    assert redact(url) == "<proxy>"


def test_redact():
    assert redact(f"socks5://user:{SECRET}@10.0.0.1:1080") == "socks5://10.0.0.1:1080"
    assert redact("socks5h://[::1]:9050") == "socks5h://[::1]:9050"


async def test_socks5h_builds_a_remote_dns_connector():
    connector = make_connector(parse_proxy(f"socks5h://u:{SECRET}@127.0.0.1:9050"), ("a", "b"))
    try:
        assert isinstance(connector, ProxyConnector)
        assert connector._rdns is True
        assert connector._proxy_type is ProxyType.SOCKS5
        assert (connector._proxy_username, connector._proxy_password) == ("a", "b")
    finally:
        await connector.close()
    assert make_connector(None) is None


def test_cooldown_grows_and_respects_retry_after():
    assert cooldown_for(0, (1, 5), None) == 0
    assert [cooldown_for(n, (1, 5), None) for n in (1, 2, 3)] == [1, 5, 5]
    assert cooldown_for(1, (1, 5), 30) == 30


async def test_round_robin_skips_resting_slots_and_takes_them_back():
    now = [0.0]
    pool = ProxyPool(
        ["socks5://127.0.0.1:1", "socks5://127.0.0.1:2", "socks5://127.0.0.1:3"],
        lambda connector: None,  # type: ignore[arg-type,return-value]
        cooldowns=(10.0,), clock=lambda: now[0],
    )
    a, b, c = pool.slots
    assert [pool.choose() for _ in range(4)] == [a, b, c, a]
    await pool.failed(b)
    assert [pool.choose() for _ in range(3)] == [c, a, c]
    assert pool.choose(avoid=a) is c
    now[0] = 11.0
    assert b in {pool.choose() for _ in range(3)}
    for slot in (a, b, c):
        await pool.failed(slot)
    assert pool.choose() in (a, b, c)  # all resting: the first to wake is used anyway


# --- through real proxies ---------------------------------------------------------------------


@needs_microsocks
async def test_requests_cross_the_proxy(standin):
    async with running_microsocks("127.0.0.2") as proxy:
        async with ScannerClient(standin.url, proxies=[proxy.url], retry_delays=FAST) as client:
            results = await client.scan_all([REQUEST, REQUEST])
            assert all(result.ok for result in results)
            assert len(client.sessions) == 1
        await _wait_for(lambda: any("connected to" in line for line in proxy.output))
    assert peers(standin) == ["127.0.0.2", "127.0.0.2"]
    port = standin.url.rsplit(":", 1)[1]
    assert any(line.endswith(f"connected to 127.0.0.1:{port}") for line in proxy.output)


@needs_microsocks
async def test_socks5h_and_authentication(standin):
    async with running_microsocks("127.0.0.2", user="quart", password=SECRET) as proxy:
        url = proxy.url.replace("socks5://", "socks5h://")
        async with ScannerClient(standin.url, proxies=[url], retry_delays=FAST) as client:
            assert (await client.scan(REQUEST)).ok
        assert peers(standin) == ["127.0.0.2"]


@needs_microsocks
async def test_wrong_password_fails_without_leaking_it(standin, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_microsocks("127.0.0.2", user="quart", password="right") as proxy:
        url = f"socks5://quart:{SECRET}@127.0.0.1:{proxy.port}"
        async with ScannerClient(standin.url, proxies=[url], retry_delays=FAST) as client:
            result = await client.scan(REQUEST)
    assert not result.ok
    assert result.error.kind == "connection"
    assert result.attempts == 4
    assert SECRET not in result.error.message
    assert "quart:" not in result.error.message
    assert caplog.records
    assert not any(SECRET in record.getMessage() for record in caplog.records)
    assert standin.state.log == []


@needs_microsocks
async def test_requests_spread_round_robin_over_proxies(standin):
    async with (
        running_microsocks("127.0.0.2") as one,
        running_microsocks("127.0.0.3") as two,
        ScannerClient(standin.url, proxies=[one.url, two.url]) as client,
    ):
        for _ in range(4):
            assert (await client.scan(REQUEST)).ok
        assert len(client.sessions) == 2
    assert peers(standin) == ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]


@needs_microsocks
async def test_a_refused_proxy_fails_over_and_never_leaks(standin, caplog):
    caplog.set_level(logging.DEBUG)
    refused = f"socks5://user:{SECRET}@127.0.0.1:{free_port()}"
    async with running_microsocks("127.0.0.3") as good, ScannerClient(
        standin.url, proxies=[refused, good.url], retry_delays=FAST
    ) as client:
        results = [await client.scan(REQUEST) for _ in range(4)]
        assert all(result.ok for result in results)
        assert results[0].attempts == 2  # the refused slot first, then the good one
        assert all(result.attempts == 1 for result in results[1:])  # refused one resting
        bad_slot = client.slots[0]
        assert bad_slot.failures == 1
        assert bad_slot.resting_until > 0
    assert set(peers(standin)) == {"127.0.0.3"}
    assert any("failed" in record.getMessage() for record in caplog.records)
    assert not any(SECRET in record.getMessage() or "user:" in record.getMessage()
                   for record in caplog.records)


@needs_microsocks
async def test_a_dead_proxy_fails_over_and_is_used_again_once_it_recovers(standin):
    async with running_microsocks("127.0.0.3") as steady:
        flaky = Microsocks(free_port(), "127.0.0.2")
        await flaky.start()
        try:
            async with ScannerClient(
                standin.url, proxies=[flaky.url, steady.url], retry_delays=FAST,
                proxy_cooldowns=(0.3,),
            ) as client:
                assert (await client.scan(REQUEST)).ok  # through flaky
                await flaky.stop()  # killed mid-test, with a pooled connection through it
                results = [await client.scan(REQUEST) for _ in range(3)]
                assert all(result.ok for result in results)
                assert any(result.attempts == 2 for result in results)  # failed over
                assert peers(standin)[0] == "127.0.0.2"
                assert set(peers(standin)[1:]) == {"127.0.0.3"}
                assert client.slots[0].failures >= 1

                await flaky.start()  # recovered, same port
                await asyncio.sleep(0.35)  # cool-down over
                standin.state.clear_log()
                for _ in range(4):
                    assert (await client.scan(REQUEST)).ok
                assert "127.0.0.2" in peers(standin)
                assert client.slots[0].failures == 0
        finally:
            await flaky.stop()


@needs_microsocks
async def test_tor_isolation_gives_each_slot_its_own_credentials_and_renews_on_429(standin):
    async with running_microsocks("127.0.0.2") as proxy:
        urls = [proxy.url, proxy.url]  # two circuits through one SocksPort
        async with ScannerClient(
            standin.url, proxies=urls, tor_isolation=True, retry_delays=FAST
        ) as client:
            one, two = client.slots
            assert one.credentials
            assert two.credentials
            assert one.credentials != two.credentials
            first_credentials, first_session = one.credentials, one.session

            standin.state.add_faults([{"kind": "status", "status": 429}])
            result = await client.scan(REQUEST)  # slot one draws the 429, slot two retries
            assert result.ok
            assert result.attempts == 2
            assert one.renewals == 1
            assert one.credentials != first_credentials
            assert one.session is not first_session
            assert first_session.closed
            assert two.renewals == 0
            assert len(client.sessions) == 2

            standin.state.add_faults([{"kind": "status", "status": 500}])
            await client.scan(REQUEST)  # a server error is not the circuit's fault
            assert one.renewals + two.renewals == 1


async def test_direct_client_without_isolation_has_no_credentials(standin):
    async with ScannerClient(standin.url, tor_isolation=True) as client:
        (slot,) = client.slots
        assert slot.spec is None
        assert slot.credentials is None
        assert slot.label == "direct"
        assert (await client.scan(REQUEST)).ok


async def _wait_for(predicate) -> None:
    """Poll: microsocks writes its log line from another process, no event to await."""
    async with asyncio.timeout(2.0):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
