"""Latency of new data: subscribe -> first snapshot, for a cached key and for a key nobody had.

    python -m bench.latency [--cached 200] [--new 30] [--background 0,5000]

One real ``quartsig serve`` and the stand-in scanner (``python -m tests.support.standin``), on
127.0.0.1. A sampler connection (the ``websockets`` client, in this process) measures, one
sample at a time, the time from sending ``subscribe`` to receiving the key's ``snapshot``:

- **cached**: keys that another connection holds (so the hub has their data); the sampler
  subscribes, waits for the snapshot, unsubscribes, next key. Target p99 < 50 ms.
- **new**: a ``full``-profile key nobody subscribed to before, so the collector has to
  fetch it (new keys are batched for ``batch_delay`` = 0.5 s, then fetched at once).
  Target: < 1 s + the scanner's own latency, which is printed alongside: for each sample,
  the stand-in's log entry (``GET /_standin/requests``) of the request that carried the
  symbol, ``finished - time``.

Each condition is run with ``--background`` idle connections too (``bench.clients``
processes, 5 ``summary`` keys each, browser-like), while the stand-in moves every value
every ``--interval`` seconds, so the samples compete with a real fan-out every tick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.clients import raise_nofile
from bench.fanout import VARIANTS, Clients, Server, Stack, subscriptions
from tests.support.measure import percentile
from tests.support.net import http_json


async def _snapshot_of(ws: Any, key: tuple[str, str, str]) -> None:
    while True:
        raw = orjson.loads(await ws.recv())
        for message in raw if isinstance(raw, list) else [raw]:
            if (
                message.get("type") == "snapshot"
                and (message["symbol"], message["tf"], message["profile"]) == key
            ):
                return
            if message.get("type") == "error":
                raise RuntimeError(message)


async def _time_snapshot(ws: Any, key: tuple[str, str, str]) -> float:
    """Milliseconds from sending ``subscribe`` for ``key`` to its snapshot; then unsubscribe."""
    started = time.perf_counter()
    await ws.send(_op("subscribe", key))
    await _snapshot_of(ws, key)
    elapsed = (time.perf_counter() - started) * 1000
    await ws.send(_op("unsubscribe", key))
    await _until(ws, "unsubscribed")
    return elapsed


async def _until(ws: Any, kind: str) -> None:
    while True:
        raw = orjson.loads(await ws.recv())
        if any(m.get("type") == kind for m in (raw if isinstance(raw, list) else [raw])):
            return


def _op(op: str, key: tuple[str, str, str]) -> str:
    return orjson.dumps({"op": op, "symbol": key[0], "tf": key[1], "profile": key[2]}).decode()


async def sample(url: str, stack: Stack, cached: int, new: int, seed: int) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    from quartsig.demo.market import DEFAULT_UNIVERSE, NO_TECHNICALS
    from quartsig.timeframes import TIMEFRAMES

    rng = random.Random(seed)
    symbols = sorted(s for g in DEFAULT_UNIVERSE.values() for s in g if s not in NO_TECHNICALS)
    held = [(s, tf, "summary") for s in rng.sample(symbols, 10) for tf in ("1h", "4h", "1d")]
    out: dict[str, Any] = {"cached": [], "new": [], "scanner": []}
    async with connect(url, compression=None, max_size=None) as holder, \
            connect(url, compression=None, max_size=None) as ws:  # fmt: skip
        await holder.send(orjson.dumps([orjson.loads(_op("subscribe", k)) for k in held]).decode())
        waiting = set(held)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                while waiting:  # one frame may carry several snapshots
                    raw = orjson.loads(await holder.recv())
                    for m in raw if isinstance(raw, list) else [raw]:
                        if m.get("type") == "snapshot":
                            waiting.discard((m["symbol"], m["tf"], m["profile"]))
        if waiting:
            print(f"  no snapshot for {sorted(waiting)}", file=sys.stderr)
        held = [key for key in held if key not in waiting]

        async def drain() -> None:
            async for _ in holder:
                pass

        draining = asyncio.create_task(drain())
        for i in range(cached):
            key = held[i % len(held)]
            out["cached"].append(await _time_snapshot(ws, key))
            await asyncio.sleep(0.11)  # 2 ops a sample: stay under 20 ops/s
        fresh = [(s, tf, "full") for s in symbols for tf in TIMEFRAMES]
        rng.shuffle(fresh)
        for key in fresh[:new]:
            started_wall = time.time()
            out["new"].append(await _time_snapshot(ws, key))
            scans = [r for r in stack.scans()
                     if key[0] in r["tickers"] and r["time"] >= started_wall - 0.01
                     and r["finished"]]  # fmt: skip
            if scans:
                out["scanner"].append((scans[0]["finished"] - scans[0]["time"]) * 1000)
            await asyncio.sleep(rng.uniform(0.1, 0.6))  # land anywhere in the tick cycle
        draining.cancel()
    return out


def row(condition: str, kind: str, values: list[float], target: str, extra: str = "") -> str:
    if not values:
        return f"| {condition} | {kind} | 0 | - | - | - | {target} | {extra} |"
    return (
        f"| {condition} | {kind} | {len(values)} | {statistics.median(values):.1f} | "
        f"{percentile(values, 99):.1f} | {max(values):.1f} | {target} | {extra} |"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached", type=int, default=200, help="cached-key samples")
    parser.add_argument("--new", type=int, default=30, help="new-key samples")
    parser.add_argument(
        "--background",
        default="0,5000",
        help="background connections per condition (comma-separated)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="QUARTSIG_INTERVAL")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--variant", metavar="DIR", type=Path,
                        help="serve the quartsig package in DIR (another checkout), for A/B runs")
    args = parser.parse_args(argv)
    if args.variant is not None:
        VARIANTS["quartsig"] = args.variant.resolve()
    hard = raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="quartsig-latency-"))
    lines = [
        f"latency: QUARTSIG_INTERVAL={args.interval:g} s, stand-in moves every value every "
        f"{args.interval:g} s; RLIMIT_NOFILE {hard}; logs in {work}",
        "",
        "| background conns | key | samples | p50 ms | p99 ms | max ms | target | "
        "scanner's own latency p50 / max ms |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    with Stack.start(work, args.interval, 1.0) as stack:
        clients = Clients(args.procs, work)
        try:
            for seed, background in enumerate(int(x) for x in args.background.split(",")):
                http_json("POST", f"{stack.standin_url}/_standin/config", {"step_every": None})
                server = Server("quartsig", stack)
                try:
                    if background:
                        got = clients.connect(
                            server.port, server.path, True, subscriptions(background, "summary")
                        )
                        print(f"  {got['connected']} background connections", file=sys.stderr)
                        http_json("POST", f"{stack.standin_url}/_standin/config",
                             {"step_every": args.interval})  # fmt: skip
                    url = f"ws://127.0.0.1:{server.port}{server.path}"
                    out = asyncio.run(sample(url, stack, args.cached, args.new, seed))
                    scanner = out["scanner"]
                    extra = (f"{statistics.median(scanner):.1f} / {max(scanner):.1f}"
                             if scanner else "-")  # fmt: skip
                    lines.append(row(str(background), "cached", out["cached"], "p99 < 50 ms"))
                    lines.append(row(str(background), "new (nobody had it)", out["new"],
                                     "< 1000 ms + scanner", extra))  # fmt: skip
                    clients.all({"op": "close"})
                finally:
                    server.stop()
        finally:
            clients.close()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
