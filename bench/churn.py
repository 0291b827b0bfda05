"""One account's fair share (issue 20, point 4): what a churning account costs upstream, and how
many keys one account can hold.

    python -m bench.churn [--seconds 20] [--every 0.5] [--per-frame 1]
    PYTHONPATH=/tmp/main python -m bench.churn    # the same against another checkout

*churn*: the held-out shape, two sockets of one account each sending a frame of made-up tickers
every ``--every`` seconds for ``--seconds`` seconds, through the real ``/ws`` route, hub and
collector (default settings, the stand-in scanner in this process), in wall-clock time; then
the same span for a normal user (one socket, five cards at once). Upstream requests are counted
at the stand-in.

*keys*: one account opens one socket more than ``QUARTSIG_MAX_CONNECTIONS_PER_ACCOUNT`` and
subscribes ``QUARTSIG_MAX_SUBSCRIPTIONS`` keys on each (the per-minute quota's clock is moved a
minute between sockets: it slows an account down, it does not bound what it holds; early fetches
are off, so the keys stay held). Prints the keys the account holds and the ``key_limit`` /
other refusals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography.fernet import Fernet

import quartsig
from quartsig.access import accounts
from quartsig.app import create_app
from tests.support.standin import Standin, create_standin_app, standin_state

KEY = Fernet.generate_key().decode()


class Clock:
    """A hand-moved clock for the per-minute quotas of the *keys* run."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


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


@contextlib.asynccontextmanager
async def served(**overrides: Any) -> AsyncIterator[tuple[Any, Any, Standin, str]]:
    async with standin_server() as (standin, url):
        with tempfile.TemporaryDirectory() as data_dir:
            app = create_app(data_dir=Path(data_dir), scanner_url=url, secret_keys=(KEY,),
                             **overrides)
            async with app.test_app() as test_app:
                await accounts.add(42)
                token = app.extensions["quartsig"].tokens.issue(42).token
                yield app, test_app.test_client(), standin, token


async def authed(ws: Any, token: str) -> dict[str, Any]:
    await ws.send(orjson.dumps({"op": "auth", "token": token, "id": "a"}).decode())
    message: dict[str, Any] = orjson.loads(await ws.receive())
    return message


def ops(symbols: Sequence[str], tf: str = "1h") -> str:
    return orjson.dumps([{"op": "subscribe", "symbol": symbol, "tf": tf, "profile": "summary",
                          "id": symbol} for symbol in symbols]).decode()


async def drain(ws: Any, seen: Counter[str]) -> None:
    """Read replies until cancelled, counting each kind (and each error or notice code)."""
    with contextlib.suppress(Exception):
        while True:
            value = orjson.loads(await ws.receive())
            for message in value if isinstance(value, list) else [value]:
                seen[message.get("code") or message["type"]] += 1


async def churn(seconds: float, every: float, per_frame: int) -> tuple[int, Counter[str]]:
    """Upstream requests while two sockets of one account subscribe made-up tickers."""
    seen: Counter[str] = Counter()
    async with (served() as (_, client, standin, token), client.websocket("/ws") as a,
                client.websocket("/ws") as b):
        for ws in (a, b):
            await authed(ws, token)
        readers = [asyncio.create_task(drain(ws, seen)) for ws in (a, b)]
        before = len(standin.log)
        started = time.monotonic()
        round = 0
        while (elapsed := time.monotonic() - started) < seconds:
            for ws, name in ((a, "A"), (b, "B")):
                await ws.send(ops([f"FX_IDC:ZQ{round}{name}{n}" for n in range(per_frame)]))
            round += 1
            await asyncio.sleep(max(0.0, round * every - elapsed))
        spent = len(standin.log) - before
        for reader in readers:
            reader.cancel()
    return spent, seen


async def normal(seconds: float) -> int:
    """Upstream requests while one socket opens a board of five cards."""
    async with served() as (_, client, standin, token), client.websocket("/ws") as ws:
        await authed(ws, token)
        seen: Counter[str] = Counter()
        reader = asyncio.create_task(drain(ws, seen))
        before = len(standin.log)
        await ws.send(ops(["FX_IDC:EURUSD", "FX_IDC:USDJPY", "FX_IDC:GBPUSD",
                           "FX_IDC:AUDUSD", "FX_IDC:USDCHF"]))
        await asyncio.sleep(seconds)
        reader.cancel()
        return len(standin.log) - before


async def keys() -> tuple[int, Counter[str], int, int]:
    """Keys one account holds with every socket it may open full of subscriptions."""
    seen: Counter[str] = Counter()
    async with served(interval=3600.0, early_fetch_budget=1e-9,
                      ops_per_second=10_000.0) as (app, client, _, token):
        state = app.extensions["quartsig"]
        clock = Clock()
        for name in ("new_keys", "shares"):  # whichever per-minute quotas this checkout has
            quota = getattr(state, name, None)
            if quota is not None and hasattr(quota, "clock"):
                quota.clock = clock
        settings = state.settings
        sockets = settings.max_connections_per_account + 1
        async with contextlib.AsyncExitStack() as stack:
            for n in range(sockets):
                ws = await stack.enter_async_context(client.websocket("/ws"))
                try:
                    await authed(ws, token)
                except Exception:  # closed: 4429, over the account's sockets
                    seen["socket refused"] += 1
                    continue
                symbols = [f"FX_IDC:ZK{n}X{i}" for i in range(settings.max_subscriptions)]
                for start in range(0, len(symbols), 32):
                    await ws.send(ops(symbols[start:start + 32]))
                replies = 0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        while replies < len(symbols):
                            value = orjson.loads(await ws.receive())
                            for message in value if isinstance(value, list) else [value]:
                                if message["type"] == "subscribed" or (
                                        message["type"] == "error" and "id" in message):
                                    replies += 1
                                    seen[message.get("code") or message["type"]] += 1
                clock.now += 61.0
            held = len(state.hub.demand())
        return held, seen, sockets, settings.max_keys


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--per-frame", type=int, default=1)
    parser.add_argument("--skip-keys", action="store_true")
    args = parser.parse_args(argv)
    print(f"quartsig from {quartsig.__file__}")
    spent, seen = asyncio.run(churn(args.seconds, args.every, args.per_frame))
    print(f"churn: two sockets of one account, {args.per_frame} made-up tickers each every "
          f"{args.every:g} s for {args.seconds:g} s: {spent} upstream requests "
          f"(replies: {dict(sorted(seen.items()))})")
    print(f"normal user, five cards, same span: {asyncio.run(normal(args.seconds))} "
          "upstream requests")
    if not args.skip_keys:
        held, refusals, sockets, cap = asyncio.run(keys())
        print(f"keys: one account, {sockets} sockets full of subscriptions: holds {held} keys "
              f"of the cluster's {cap} (replies: {dict(sorted(refusals.items()))})")


if __name__ == "__main__":
    main()
