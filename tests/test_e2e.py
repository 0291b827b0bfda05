"""End to end: real ``quartsig serve`` processes, the stand-in scanner in a subprocess, and
real websocket clients (the ``websockets`` asyncio client; for a client that truly stops
reading, a raw socket with a small receive buffer driven by the sans-IO ``wsproto``).

Every contract point of docs/protocol.md that needs a socket is checked here: identical
bytes for subscribers of one key, instant cached snapshots, changes-only updates that
rebuild the upstream state, demand leaving the scanner requests, every error and close
code, declined compression, slow clients, shutdown, account revocation, upstream faults,
metrics and ``--demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from cryptography.fernet import Fernet
from websockets.asyncio.client import ClientConnection, connect
from wsproto.events import TextMessage

from quartsig.access.tokens import TokenAuthority
from quartsig.domain.model import Key
from quartsig.plugins.loader import get_plugin_manager, load_profiles
from tests.support.clients import (
    RawClient,
    State,
    apply,
    client,
    close_of,
    frame,
    is_,
    key_of,
    quiet,
    send,
    target,
    until,
)
from tests.support.net import eventually
from tests.support.processes import quartsig_cli
from tests.support.stack import Stack, server_stack

pytestmark = pytest.mark.e2e

PROFILES = load_profiles(get_plugin_manager(entry_points=False))
BOT_SECRET = "e2e-bot-secret-" + "x" * 24


# ================================================================================ harness


async def _when(metrics: Awaitable[dict[str, float]], **wanted: float
                ) -> dict[str, float] | None:
    """The metrics, when every series in ``wanted`` has its value."""
    got = await metrics
    return got if all(got.get(name) == value for name, value in wanted.items()) else None


async def _at_least(count: int, items: Awaitable[list[Any]]) -> list[Any] | None:
    got = await items
    return got if len(got) >= count else None


def expected(stack: Stack, key: Key) -> dict[str, Any]:
    """What ``key``'s profile makes of the stand-in's current values (blocking)."""
    values = stack.stand.set_values(key.symbol, key.tf, {})  # {} pins nothing: a read
    profile = PROFILES[key.profile]
    return profile.compute({base: values.get(base) for base in profile.columns})


def authority(stack: Stack, **options: Any) -> TokenAuthority:
    return TokenAuthority([stack.env["QUARTSIG_SECRET_KEYS"]], 86400, **options)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Awaitable[Stack]]]:
    """``await launch(*serve_args, standin_args=(), standin=True, **settings)`` -> a Stack
    (settings by name: ``interval="0.5"`` is ``QUARTSIG_INTERVAL``); started in a thread,
    so that clients of an earlier stack keep being served meanwhile."""
    with contextlib.ExitStack() as stack:
        count = itertools.count(1)

        def start(*serve_args: str, standin_args: tuple[str, ...] = (), standin: bool = True,
                  **extra: str) -> Stack:
            settings = {"interval": "0.5", "bot_secret": BOT_SECRET,
                        "secret_keys": Fernet.generate_key().decode(), **extra}  # fmt: skip
            return stack.enter_context(server_stack(
                tmp_path / f"stack{next(count)}", *serve_args, standin_args=standin_args,
                standin=standin, account=None,
                **{f"QUARTSIG_{name.upper()}": value for name, value in settings.items()},
            ))

        async def launch(*serve_args: str, **options: Any) -> Stack:
            return await asyncio.to_thread(start, *serve_args, **options)

        yield launch


# ================================================================================ data


async def test_two_clients_sharing_a_key_receive_identical_update_bytes(launch):
    stack = await launch(standin_args=("--change-share", "1"))
    one, two = await client(stack, 42), await client(stack, 43)
    key = target("EURUSD", "1m")
    for ws in (one, two):
        await send(ws, {"op": "subscribe", **key})
        await until(ws, is_("snapshot"))
    for _ in range(3):
        await asyncio.to_thread(stack.stand.step)
        async with asyncio.timeout(5):
            first, second = await one.recv(decode=False), await two.recv(decode=False)
        assert isinstance(first, bytes) and first == second
        message = orjson.loads(first)
        assert message["type"] == "update" and message["symbol"] == "FX_IDC:EURUSD"
    await one.close()
    await two.close()


async def test_a_late_subscriber_gets_the_cached_snapshot_at_once(launch):
    stack = await launch(interval="30")
    early = await client(stack, 42)
    subscribe = {"op": "subscribe", **target("usdjpy", "1h")}
    started = time.monotonic()
    await send(early, subscribe)
    first = await until(early, is_("snapshot"), within=5)
    fetched = time.monotonic() - started
    # fetched at once, not at the next tick (30 s away): bounds far from both
    assert fetched < 10, f"a new key waited {fetched:.2f} s (interval is 30 s)"
    requests = len(await asyncio.to_thread(stack.stand.requests))
    assert requests == 1

    late = await client(stack, 43)
    started = time.monotonic()
    await send(late, subscribe)
    snapshot = await until(late, is_("snapshot"), within=5)
    elapsed = time.monotonic() - started
    # from the cache (no request below), not from a fetch or the next tick (30 s away)
    assert elapsed < 10, f"cached snapshot took {elapsed:.3f} s"
    assert snapshot == first  # the cached data, ts included
    assert len(await asyncio.to_thread(stack.stand.requests)) == requests  # no fetch for it
    await early.close()
    await late.close()


async def test_updates_carry_only_changes_and_rebuild_the_upstream_state(launch):
    stack = await launch(standin_args=("--change-share", "1"))
    ws = await client(stack)
    keys = [
        Key("full", "FX_IDC:USDJPY", "5m"),
        Key("summary", "FX_IDC:USDJPY", "5m"),
        Key("full", "BINANCE:BTCUSDT", "1h"),
    ]
    await send(ws, [{"op": "subscribe", **target(k.symbol, k.tf, k.profile)} for k in keys])
    state: State = {}
    seen: list[dict[str, Any]] = []
    while len(state) < len(keys):
        apply(state, [await until(ws, is_("snapshot"), seen=seen)])
    assert all([state[k] == await asyncio.to_thread(expected, stack, k) for k in keys])

    sizes = []
    for _ in range(4):
        await asyncio.to_thread(stack.stand.step)
        received: list[dict[str, Any]] = []
        await until(ws, is_("update", profile="full", tf="5m"), within=5, seen=received)
        received += await quiet(ws, 0.4)  # anything else of this tick
        for message in received:
            assert message["type"] == "update", message
            before = state[key_of(message)]
            assert message["data"], "an update with nothing in it"
            changed = {n for n, v in message["data"].items() if before.get(n) != v}
            assert changed == set(message["data"]), "an update repeated unchanged keys"
            if message["profile"] == "full":
                sizes.append(len(message["data"]))
        apply(state, received)
        for key in keys:
            assert state[key] == await asyncio.to_thread(expected, stack, key), key
    full_size = len(await asyncio.to_thread(expected, stack, keys[0]))
    assert min(sizes) < full_size  # labels, actions and counts mostly stay put
    await ws.close()


async def test_an_unsubscribed_key_leaves_the_next_scanner_request(launch):
    stack = await launch()
    ws = await client(stack)
    kept, dropped = target("EURUSD", "1m", "summary"), target("GBPUSD", "1m", "summary")
    await send(ws, [{"op": "subscribe", **kept}, {"op": "subscribe", **dropped}])
    snapshots: set[str] = set()
    while len(snapshots) < 2:
        snapshots.add((await until(ws, is_("snapshot")))["symbol"])

    async def tickers_after(moment: float) -> list[set[str]]:
        requests = await asyncio.to_thread(stack.stand.requests)
        return [set(r["tickers"]) for r in requests if r["time"] > moment]

    now = time.time()
    both = await eventually(lambda: tickers_after(now), what="a tick")
    assert {"FX_IDC:EURUSD", "FX_IDC:GBPUSD"} <= set.union(*both)

    await send(ws, {"op": "unsubscribe", **dropped})
    assert (await until(ws, is_("unsubscribed")))["symbol"] == "FX_IDC:GBPUSD"
    left = time.time()
    later = await eventually(lambda: _at_least(3, tickers_after(left)), what="three ticks")
    assert all("FX_IDC:GBPUSD" not in tickers for tickers in later), later
    assert all("FX_IDC:EURUSD" in tickers for tickers in later), later

    await ws.close()  # closing removes the rest of the demand
    closed = time.time()
    await asyncio.sleep(1.5)
    assert await tickers_after(closed + 0.1) == []


# ====================================================================== errors and closes


@pytest.fixture
async def strict(launch) -> Stack:
    """A server with small limits, to reach each of them quickly."""
    return await launch(auth_timeout="1", max_subscriptions="3", allowed_origins="https://ok.example")


async def test_auth_failures_close_with_4401_4403_and_4408(strict: Stack):
    async def closed_after(first: Any = None, url: str = strict.ws_url) -> tuple[Any, ...]:
        ws = await connect(url, ping_interval=None)
        if first is not None:
            await ws.send(first if isinstance(first, str) else orjson.dumps(first).decode())
        return await close_of(ws)

    good = await strict.token_for(42)
    tampered = good[:-6] + ("A" if good[-6] != "A" else "B") + good[-5:]
    old = authority(strict, clock=lambda: time.time() - 10 * 86400).issue(42).token
    foreign = TokenAuthority([Fernet.generate_key().decode()], 86400).issue(42).token
    assert await closed_after({"op": "auth", "token": "garbage"}) == (4401, "bad token")
    assert await closed_after({"op": "auth", "token": tampered}) == (4401, "bad token")
    assert await closed_after({"op": "auth", "token": foreign}) == (4401, "bad token")
    assert await closed_after({"op": "auth", "token": old}) == (4401, "token expired")
    assert await closed_after({"op": "ping"}) == (4401, "auth required")
    assert await closed_after("not json") == (4401, "auth required")
    assert await closed_after(url=f"{strict.ws_url}?token=garbage") == (4401, "bad token")

    unknown = authority(strict, ).issue(999).token  # a valid token, but no such account
    assert await closed_after({"op": "auth", "token": unknown}) == (
        4403, "account unknown or disabled",
    )  # fmt: skip
    await strict.token_for(77)
    await asyncio.to_thread(quartsig_cli, strict.env, "account", "disable", "77")
    assert await closed_after({"op": "auth", "token": await strict.token_for(77)}) == (
        4403, "account unknown or disabled",
    )  # fmt: skip

    started = time.monotonic()
    assert await closed_after() == (4408, "auth timeout")
    assert 0.8 < time.monotonic() - started < 3.0

    # And the query-string form of a good token works.
    ws = await connect(f"{strict.ws_url}?token={good}", ping_interval=None)
    assert await frame(ws) == [{"type": "authed", "tg_id": 42}]
    await ws.close()


async def test_a_foreign_origin_is_refused_before_the_upgrade(strict: Stack):
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(strict.ws_url, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    for origin in ("https://ok.example", f"http://127.0.0.1:{strict.server.port}", None):
        ws = await connect(strict.ws_url, origin=origin)
        await send(ws, {"op": "auth", "token": await strict.token_for()})
        assert (await frame(ws))[0]["type"] == "authed"
        await ws.close()


async def test_bad_messages_get_each_error_code_and_the_connection_stays(strict: Stack):
    ws = await client(strict)

    async def error_for(message: Any) -> dict[str, Any]:
        if isinstance(message, bytes):
            await ws.send(message)
        else:
            await ws.send(message if isinstance(message, str) else orjson.dumps(message).decode())
        return await until(ws, is_("error"))

    cases: list[tuple[Any, str]] = [
        ("{not json", "bad_json"),
        (b'{"op": "ping"}', "bad_json"),  # binary frames are refused
        ({"op": "dance", "id": 3}, "bad_op"),
        ([1], "bad_op"),
        ([], "bad_op"),
        ({"op": "ping", "id": True}, "bad_op"),
        ({"op": "auth", "token": await strict.token_for(), "id": "again"}, "bad_op"),
        ({"op": "subscribe", "symbol": "", "tf": "1m", "id": 4}, "bad_symbol"),
        ({"op": "subscribe", "symbol": "NOPE:USDJPY", "tf": "1m"}, "bad_symbol"),
        ({"op": "subscribe", "symbol": "USDJPY", "tf": "7m", "id": "t"}, "bad_timeframe"),
        ({"op": "subscribe", "symbol": "USDJPY", "tf": "1m", "profile": "nope"}, "bad_profile"),
    ]
    for message, code in cases:
        error = await error_for(message)
        assert error["code"] == code, (message, error)
        assert error["message"]
        wanted_id = message.get("id") if isinstance(message, dict) else None
        if code != "bad_op" or wanted_id is not True:
            assert error.get("id") == wanted_id, (message, error)
    await send(ws, {"op": "ping", "id": "still-here"})
    assert await until(ws, is_("pong")) == {"type": "pong", "id": "still-here"}
    await ws.close()


async def test_unknown_symbols_and_too_many_subscriptions(strict: Stack):
    ws = await client(strict)
    await send(ws, {"op": "subscribe", **target("ZZZQQQ", "5m"), "id": 1})
    assert (await until(ws, is_("subscribed")))["symbol"] == "FX_IDC:ZZZQQQ"
    error = await until(ws, is_("error"), within=5)
    assert (error["code"], error["symbol"], error["tf"], error["profile"]) == (
        "unknown_symbol", "FX_IDC:ZZZQQQ", "5m", "full",
    )  # fmt: skip
    # Asked again, it is refused at once, from memory.
    await send(ws, {"op": "subscribe", **target("ZZZQQQ", "1h"), "id": 2})
    again = await until(ws, is_("error"), within=0.5)
    assert (again["code"], again["id"]) == ("unknown_symbol", 2)

    for n, symbol in enumerate(("EURUSD", "GBPUSD", "AUDUSD", "NZDUSD")):
        await send(ws, {"op": "subscribe", **target(symbol, "1m", "summary"), "id": n})
    refused = await until(ws, is_("error"))
    assert (refused["code"], refused["id"]) == ("too_many_subscriptions", 3)
    await send(ws, {"op": "ping"})
    await until(ws, is_("pong"))
    await ws.close()


async def test_an_oversized_frame_closes_with_1009(strict: Stack):
    ws = await client(strict)
    await ws.send(json.dumps({"op": "ping", "pad": "x" * 4097}))  # over our 4096
    assert await close_of(ws) == (1009, "frame too big")
    # Over what Hypercorn itself lets through (4 x 4096): Hypercorn answers 1009 but does
    # not end the TCP connection, so the client gives up after its own close_timeout.
    ws = await client(strict, close_timeout=1)
    await ws.send(json.dumps({"op": "ping", "pad": "x" * 64 * 1024}))
    assert (await close_of(ws))[0] == 1009
    ws = await client(strict)  # a frame of exactly the limit is fine
    padding = "x" * (4096 - len('{"op":"ping","pad":""}'))
    await ws.send(f'{{"op":"ping","pad":"{padding}"}}')
    assert await until(ws, is_("pong"))
    await ws.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
async def test_an_endless_fragmented_message_is_not_stored(strict: Stack):
    """1009 is not enough: what the client keeps sending must not pile up in the server."""
    assert strict.server.process is not None
    pid = strict.server.process.pid

    def rss() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    raw = await asyncio.to_thread(RawClient, strict.server.port, await strict.token_for())
    await asyncio.to_thread(raw.read, 5, lambda: bool(raw.messages))
    before = rss()
    chunk = "x" * (1 << 20)
    for _ in range(64):  # one 64 MiB message, in 1 MiB fragments
        raw.sock.sendall(raw.ws.send(TextMessage(chunk, message_finished=False)))
    await asyncio.to_thread(raw.read, 5, lambda: raw.close_code is not None)
    assert raw.close_code == 1009
    await asyncio.sleep(0.3)
    grown = rss() - before
    assert grown < 16 * 1024 * 1024, f"server RSS grew by {grown >> 20} MiB"
    raw.close()


async def test_rate_limited_ops_then_a_flood_closes_with_1008(launch):
    stack = await launch(ops_per_second="2")
    ws = await client(stack)
    await send(ws, [{"op": "ping", "id": n} for n in range(10)])
    replies = await quiet(ws, 0.5)
    assert [m["id"] for m in replies if m["type"] == "pong"] == [0, 1, 2, 3]  # the burst
    limited = [m for m in replies if m["type"] == "error"]
    assert {m["code"] for m in limited} == {"rate_limited"}
    assert [m["id"] for m in limited] == list(range(4, 10))
    await asyncio.sleep(1.2)  # the bucket refills: obeyed again
    await send(ws, {"op": "ping", "id": "ok"})
    assert await until(ws, is_("pong")) == {"type": "pong", "id": "ok"}

    for _ in range(3):  # 192 ops: more than 100 refused in a row
        with contextlib.suppress(websockets.ConnectionClosed):
            await send(ws, [{"op": "ping"} for _ in range(64)])
    assert await close_of(ws) == (1008, "rate limit")


async def test_permessage_deflate_is_declined_although_offered(strict: Stack):
    ws = await connect(strict.ws_url)  # websockets offers permessage-deflate by default
    assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
    assert "Sec-WebSocket-Extensions" not in ws.response.headers
    await send(ws, {"op": "auth", "token": await strict.token_for()})
    await send(ws, {"op": "subscribe", **target("EURUSD", "1d")})
    assert (await until(ws, is_("snapshot")))["data"]
    await ws.close()


# ========================================================================== slow clients


FOREX = ("EURUSD", "GBPUSD", "USDJPY", "USDCHF", "AUDUSD", "NZDUSD", "USDCAD", "EURGBP",
         "EURJPY", "GBPJPY", "EURCHF", "AUDJPY", "CADJPY", "CHFJPY", "EURAUD", "EURCAD",
         "EURNZD", "GBPAUD", "GBPCAD", "GBPCHF", "GBPNZD", "AUDCAD", "AUDCHF", "AUDNZD",
         "NZDJPY", "NZDCAD", "NZDCHF", "USDSEK", "USDNOK", "USDMXN")  # fmt: skip
#: 300 ``full`` keys: each update of all of them is about 0.9 MB.
FULL_KEYS = [Key("full", f"FX_IDC:{symbol}", tf) for symbol in FOREX
             for tf in ("1m", "5m", "15m", "30m", "1h", "2h", "4h", "1d", "1W", "1M")]  # fmt: skip


def subscribe_all(keys: list[Key]) -> list[list[dict[str, Any]]]:
    """Subscribe frames for ``keys``, each well under the 4096-byte frame limit."""
    ops = [{"op": "subscribe", **target(k.symbol, k.tf, k.profile)} for k in keys]
    return [ops[i : i + 30] for i in range(0, len(ops), 30)]


async def reference(stack: Stack, keys: list[Key], tg_id: int) -> tuple[ClientConnection, State]:
    ws = await client(stack, tg_id)
    for batch in subscribe_all(keys):
        await send(ws, batch)
    state: State = {}
    while len(state) < len(keys):
        apply(state, [await until(ws, is_("snapshot"))])
    return ws, state


async def test_a_stalled_client_delays_nobody_and_catches_up(launch):
    # The kernel absorbs a few MB for a reader that stopped (the server's send buffer grows
    # to tcp_wmem's maximum); ten steps of 300 full keys are about 9 MB, so the server's
    # sends to the stalled client block for the last several ticks.
    stack = await launch(standin_args=("--change-share", "1"), send_timeout="30",
                   ops_per_second="1000", max_subscriptions="400",
                   max_keys_per_account="0", early_fetches_per_account="1000")  # fmt: skip
    stalled = await asyncio.to_thread(RawClient, stack.server.port, await stack.token_for(40))
    for batch in subscribe_all(FULL_KEYS):
        stalled.send(batch)
    snapshots = lambda: {key_of(m) for m in stalled.messages if m["type"] == "snapshot"}  # noqa: E731
    await asyncio.to_thread(stalled.read, 10, lambda: snapshots() == set(FULL_KEYS))
    assert snapshots() == set(FULL_KEYS)
    await asyncio.to_thread(stalled.read, 1.0, None, 0.5)  # the rest of the replies

    watched = FULL_KEYS[:3]  # shared with the stalled client
    other, state = await reference(stack, watched, 41)
    latencies = []
    steps = 10
    # The stalled client now reads nothing while the market moves.
    for _ in range(steps):
        stepped = time.monotonic()
        await asyncio.to_thread(stack.stand.step)  # change_share 1: every key changes on every step
        seen: list[dict[str, Any]] = []
        await until(other, is_("update"), within=5, seen=seen)
        latencies.append(time.monotonic() - stepped)
        fanout = time.time() - seen[-1]["ts"] / 1000
        assert fanout < 0.5, f"the update left {fanout:.2f} s after its data arrived"
        seen += await quiet(other, 0.05)
        apply(state, seen)
    assert max(latencies) < 0.5 + 1.0, latencies  # an interval and a fetch, stall or not
    for key in watched:
        assert state[key] == await asyncio.to_thread(expected, stack, key), key

    # It reads again: it catches up to the current state, not through the whole history.
    before = len(stalled.messages)
    await asyncio.to_thread(stalled.read, 20, None, 2.0)
    assert stalled.close_code is None and not stalled.eof
    caught_up: State = {}
    apply(caught_up, stalled.messages)
    updates: dict[Key, int] = {}
    for message in stalled.messages[before:]:
        assert message["type"] == "update", message
        updates[key_of(message)] = updates.get(key_of(message), 0) + 1
    assert set(updates) == set(FULL_KEYS)
    assert max(updates.values()) <= steps
    assert sum(updates.values()) < steps * len(FULL_KEYS), "no piece was ever merged"
    for key in watched:
        assert caught_up[key] == state[key]
    for key in FULL_KEYS[::7]:
        assert caught_up[key] == await asyncio.to_thread(expected, stack, key), key
    stalled.send({"op": "ping", "id": "back"})
    await asyncio.to_thread(stalled.read, 5, lambda: stalled.messages[-1].get("id") == "back")
    assert stalled.messages[-1] == {"type": "pong", "id": "back"}
    stalled.close()
    await other.close()


async def test_a_hopeless_client_is_closed_with_1013_while_others_keep_up(launch):
    stack = await launch(send_timeout="1", ops_per_second="1000", max_subscriptions="400",
                         max_keys_per_account="0", early_fetches_per_account="1000")
    await stack.standin_config(change_share=1, step_every=0.5)  # ~0.9 MB for it per tick
    stalled = await asyncio.to_thread(RawClient, stack.server.port, await stack.token_for(40))
    for batch in subscribe_all(FULL_KEYS):
        stalled.send(batch)
    # It never reads again. Another client watches a key it shares.
    other, _ = await reference(stack, FULL_KEYS[:2], 41)
    arrivals = []
    started = time.monotonic()
    closed_at = None
    while time.monotonic() - started < 12:
        messages = await frame(other, within=3)
        if any(m["type"] == "update" for m in messages):
            arrivals.append(time.monotonic())
        metrics = await stack.metrics()
        if closed_at is None and metrics.get("quartsig_slow_closes_total", 0) >= 1:
            closed_at = time.monotonic() - started
        if closed_at is not None and time.monotonic() - started > closed_at + 2:
            break
    assert closed_at is not None, "the stalled client was never closed"
    assert (await stack.metrics()).get('quartsig_closes_total{code="1013"}') == 1
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 6 and max(gaps) < 1.5, gaps  # the others never waited on it

    # When it finally reads, it finds the 1013 close at the end of its backlog (or the end
    # of the stream, if the server had to give up on sending even that).
    await asyncio.to_thread(stalled.read, 10)
    assert stalled.close_code == 1013 or stalled.eof, (stalled.close_code, stalled.eof)
    stalled.close()
    await other.close()


# ========================================================================= life cycle


async def test_sigterm_closes_every_client_with_1001_and_exits_promptly(launch):
    stack = await launch()
    clients = [await client(stack, tg_id) for tg_id in (42, 43, 44)]
    for ws in clients:
        await send(ws, {"op": "subscribe", **target("EURUSD", "5m")})
        await until(ws, is_("snapshot"))
    process = stack.server.process
    assert process is not None
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    closes = await asyncio.gather(*(close_of(ws, within=5) for ws in clients))
    assert [code for code, _ in closes] == [1001, 1001, 1001]
    await asyncio.to_thread(process.wait, 5)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, stack.server.tail()
    assert elapsed < 5.0, f"exit took {elapsed:.2f} s"


async def test_disabling_an_account_closes_its_connection_within_an_interval(launch):
    stack = await launch()
    keep, revoke = await client(stack, 42), await client(stack, 43)
    await asyncio.to_thread(quartsig_cli, stack.env, "account", "disable", "43")
    disabled = time.monotonic()
    assert await close_of(revoke, within=3) == (4403, "account disabled")
    assert time.monotonic() - disabled < 0.5 + 1.0
    await send(keep, {"op": "ping", "id": 1})
    assert await until(keep, is_("pong")) == {"type": "pong", "id": 1}
    ws = await connect(stack.ws_url, ping_interval=None)
    await send(ws, {"op": "auth", "token": await stack.token_for(43)})
    assert await close_of(ws) == (4403, "account unknown or disabled")
    await keep.close()


async def test_upstream_trouble_keeps_data_and_recovers(launch):
    stack = await launch(standin_args=("--change-share", "1"))
    ws = await client(stack)
    keys = [Key("full", "FX_IDC:USDJPY", "5m"), Key("summary", "FX_IDC:USDJPY", "5m")]
    await send(ws, [{"op": "subscribe", **target(k.symbol, k.tf, k.profile)} for k in keys])
    state: State = {}
    while len(state) < 2:
        apply(state, [await until(ws, is_("snapshot"))])
    kept = {k: dict(v) for k, v in state.items()}

    await asyncio.to_thread(stack.stand.add_faults, {"kind": "status", "status": 503,
                                                     "sticky": True})
    # the market moves while TradingView is unreachable
    await asyncio.to_thread(stack.stand.step, 3)
    seen: list[dict[str, Any]] = []
    status = await until(ws, is_("status"), within=5, seen=seen)
    assert status["upstream"] == "down" and status["reason"]
    seen += await quiet(ws, 1.5)  # three more failing ticks
    # No update, no snapshot: data kept. (Backing off, each step says when the next try is.)
    assert {m["type"] for m in seen} == {"status"}, seen
    assert {m["upstream"] for m in seen} == {"down"}, seen

    # A client connecting now is told at once.
    late = await client(stack, 43)  # authed first (checked in client()), then the status
    [told] = await frame(late)
    # (the reason is the latest tick's: on a busy machine a timeout may precede the 503s)
    assert (told["type"], told["upstream"]) == ("status", "down") and told["reason"]
    await late.close()

    await asyncio.to_thread(stack.stand.clear_faults)
    seen = []
    # (a tick already failing when the faults cleared may still say "down" first)
    await until(ws, is_("status", upstream="ok"), within=15, seen=seen)
    seen += await quiet(ws, 1.0)
    apply(state, seen)
    assert any(m["type"] == "update" for m in seen)
    assert not any(m["type"] == "snapshot" for m in seen)
    for key in keys:
        assert state[key] == await asyncio.to_thread(expected, stack, key)
    assert state[keys[0]] != kept[keys[0]]
    await ws.close()


async def test_metrics_count_connections_subscriptions_keys_and_frames(launch):
    stack = await launch(standin_args=("--change-share", "1"))
    start = await stack.metrics()
    assert (start["quartsig_connections"], start["quartsig_subscriptions"],
            start["quartsig_keys"]) == (0, 0, 0)  # fmt: skip
    frames_before = start.get("quartsig_frames_sent_total", 0)

    async def frames_until_quiet(ws: ClientConnection, idle: float) -> int:
        count = 0
        while True:
            try:
                async with asyncio.timeout(idle):
                    await ws.recv()
            except TimeoutError:
                return count
            count += 1

    one, two = await client(stack, 42), await client(stack, 43)
    received = 2  # the two authed frames
    await send(one, [{"op": "subscribe", **target("USDJPY", "5m")},
                     {"op": "subscribe", **target("USDJPY", "5m", "summary")}])  # fmt: skip
    await send(two, {"op": "subscribe", **target("USDJPY", "5m")})
    for _ in range(3):
        await asyncio.to_thread(stack.stand.step)
        await asyncio.sleep(0.6)
    received += sum(await asyncio.gather(frames_until_quiet(one, 1.0),
                                         frames_until_quiet(two, 1.0)))  # fmt: skip
    during = await stack.metrics()
    assert (during["quartsig_connections"], during["quartsig_subscriptions"],
            during["quartsig_keys"]) == (2, 3, 2)  # fmt: skip
    assert received >= 2 + 3 + 3  # authed, replies and snapshots, updates of three steps
    assert during["quartsig_frames_sent_total"] - frames_before == received
    assert during["quartsig_bytes_sent_total"] > 0
    assert during['quartsig_upstream_requests_total{outcome="ok"}'] >= 3
    assert during["quartsig_tick_seconds_count"] >= 3

    await one.close()
    await two.close()
    end = await eventually(lambda: _when(stack.metrics(), quartsig_connections=0),
                           what="the closes")
    assert (end["quartsig_subscriptions"], end["quartsig_keys"]) == (0, 0)
    assert end["quartsig_frames_sent_total"] == during["quartsig_frames_sent_total"]


async def test_demo_mode_serves_live_data_without_a_scanner(launch):
    stack = await launch("--demo", standin=False)
    assert "QUARTSIG_SCANNER_URL" not in stack.env
    ws = await client(stack)
    await send(ws, {"op": "subscribe", **target("EURUSD", "1m")})
    snapshot = await until(ws, is_("snapshot"), within=5)
    assert snapshot["symbol"] == "FX_IDC:EURUSD" and snapshot["data"]["close"] > 0
    update = await until(ws, is_("update"), within=10)  # the demo market moves by itself
    assert update["data"]
    await ws.close()


def _seconds_until_dropped(raw: RawClient, limit: float) -> float | None:
    """Read raw bytes only, so that no pong ever goes back; when does the server hang up?"""
    started = time.monotonic()
    raw.sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            data = raw.sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            data = b""
        if not data:
            return time.monotonic() - started
    return None


async def test_a_dead_peer_is_dropped_after_the_heartbeat_deadline(launch):
    """A peer that stops answering the server's pings is dropped once a ping goes
    unanswered for the timeout (quartsig.hosting), and by Hypercorn's read timeout of
    interval + timeout at the latest, while a live one (its library answers pings) stays."""
    stack = await launch(heartbeat_interval="1", heartbeat_timeout="0.5")
    live = await client(stack)
    dead = await asyncio.to_thread(RawClient, stack.server.port, await stack.token_for())
    authed = lambda: any(m.get("type") == "authed" for m in dead.messages)  # noqa: E731
    await asyncio.to_thread(dead.read, 5.0, authed)
    try:
        # In a thread, so that the live client's library keeps answering pings meanwhile.
        dropped_after = await asyncio.to_thread(_seconds_until_dropped, dead, 6.0)
    finally:
        dead.close()
    assert dropped_after is not None, "the silent peer was never dropped"
    assert dropped_after <= 3.5  # a ping may have left before the count started
    await send(live, {"op": "ping", "id": "alive"})
    assert (await until(live, is_("pong")))["id"] == "alive"
    await live.close()
