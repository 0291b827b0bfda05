"""From a bad Redis entry to the cluster publishing again, on two real nodes (#20).

    python -m bench.badentry [--rounds 5] [--within 20] [--source DIR]

A private ``redis-server``, the stand-in scanner, two ``quartsig serve`` nodes (the code in
``--source``, this checkout by default: run it once with an old checkout's directory for the
"before") and one board per node watching one key. Each round changes that key's value twice:
once with nothing wrong (``clean``), once right after one bad entry in every structure quartsig
reads (``tests/support/garbage.py``: ``ZADD quartsig:demand 9999999999999 bad`` and more);
printed: seconds until both boards hold the new value, medians side by side ("never" when it
did not come within ``--within`` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from tests.support.garbage import forge
from tests.support.net import free_port, http, wait_until
from tests.support.processes import REPO, Standin, quartsig_cli, quartsig_env, stop_process

SYMBOL, TF = "FX_IDC:EURUSD", "1h"


@contextlib.contextmanager
def redis_server(log: Path) -> Iterator[str]:
    port = free_port()
    with open(log, "ab") as sink:
        process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no"],
                                   stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                          capture_output=True, text=True,
                                          check=False).stdout.strip() == "PONG", 10,
                   what="redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process)


@contextlib.contextmanager
def node(env: dict[str, str], source: Path, log: Path) -> Iterator[str]:
    port = free_port()
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "quartsig", "serve", "--bind", f"127.0.0.1:{port}"],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=source)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", f"{url}/healthz", timeout=1)[0] == 200, 30,
                   what="quartsig serve")
        yield url
    finally:
        stop_process(process)


async def board(session: aiohttp.ClientSession, url: str, token: str,
                seen: dict[str, Any]) -> None:
    async with session.ws_connect(url.replace("http", "ws") + f"/ws?token={token}") as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "symbol": SYMBOL, "tf": TF,
                                      "profile": "summary"}))
        async for message in ws:
            frames = json.loads(message.data)
            for frame in frames if isinstance(frames, list) else [frames]:
                if frame.get("type") in ("snapshot", "update"):
                    value = frame["data"].get("Recommend.All")
                    if value is not None:
                        seen[url] = value


async def change(standin: Standin, seen: dict[str, Any], urls: list[str], value: float,
                 within: float) -> float | None:
    started = time.monotonic()
    await asyncio.to_thread(standin.set_values, SYMBOL, TF, {"Recommend.All": value})
    while time.monotonic() - started < within:
        if all(seen.get(url) == value for url in urls):
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return None


async def measure(standin: Standin, redis_url: str, urls: list[str], token: str, rounds: int,
                  within: float) -> dict[str, list[float | None]]:
    seen: dict[str, Any] = {}
    found: dict[str, list[float | None]] = {"clean": [], "bad entry": []}
    async with aiohttp.ClientSession() as session:
        readers = [asyncio.create_task(board(session, url, token, seen)) for url in urls]
        try:
            async with asyncio.timeout(60):
                while len(seen) < len(urls):  # noqa: ASYNC110 (a dict the readers fill)
                    await asyncio.sleep(0.05)
            client = aioredis.Redis.from_url(redis_url)
            value = 0.0
            for _ in range(rounds):
                value += 0.01
                found["clean"].append(await change(standin, seen, urls, value, within))
                await forge(client)
                value += 0.01
                found["bad entry"].append(await change(standin, seen, urls, value, within))
            await client.aclose()
        finally:
            for reader in readers:
                reader.cancel()
    return found


def shown(values: list[float | None]) -> str:
    done = [value for value in values if value is not None]
    if not done:
        return "never"
    median = statistics.median(done)
    return f"{median:.2f} s" + (f" ({len(values) - len(done)} never)" if len(done) < len(values)
                                else "")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--within", type=float, default=20.0)
    parser.add_argument("--source", type=Path, default=REPO)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        with redis_server(log_dir / "redis.log") as redis_url, Standin.start(log_dir) as standin:
            env = quartsig_env(log_dir / "data", standin.url, QUARTSIG_REDIS_URL=redis_url,
                               QUARTSIG_LEASE_TTL="1.5", QUARTSIG_INTERVAL="1")
            quartsig_cli(env, "account", "add", "42")
            token = quartsig_cli(env, "token", "issue", "42").strip()
            with node(env, args.source, log_dir / "a.log") as a, \
                    node(env, args.source, log_dir / "b.log") as b:
                found = asyncio.run(measure(standin, redis_url, [a, b], token, args.rounds,
                                            args.within))
    print(f"source: {args.source}; {args.rounds} rounds; interval 1 s; both boards hold the "
          "new value after (median):")
    print(f"{'nothing wrong':>16}  {'after bad entries':>18}")
    print(f"{shown(found['clean']):>16}  {shown(found['bad entry']):>18}")


if __name__ == "__main__":
    main()
