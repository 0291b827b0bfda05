"""Latency of new data: subscribe -> first snapshot, for a cached key and for a key nobody had.

    python -m bench.latency [--cached 200] [--new 30] [--background 0,5000] [--burst 300x5]
        [--compare main=DIR] [--rounds 3]

One real ``quartsig serve`` and the stand-in scanner (``python -m tests.support.standin``), on
127.0.0.1. A sampler connection (the ``websockets`` client, in this process) measures, one
sample at a time, the time from sending ``subscribe`` to receiving the key's ``snapshot``:

- **cached**: keys that another connection holds (so the hub has their data); the sampler
  subscribes, waits for the snapshot, unsubscribes, next key. Target p99 < 50 ms.
- **new**: a ``full``-profile key nobody subscribed to before, so the collector has to
  fetch it early. Target (issue 15): p50 <= 0.25 s and p99 <= 0.5 s + the scanner's own
  latency, which is printed alongside: for each sample, the stand-in's log entry
  (``GET /_standin/requests``) of the request that carried the symbol, ``finished - time``.
- **burst** (``--burst CLIENTSxKEYS``, e.g. ``300x5``): that many fresh connections, already
  authenticated, send their ``subscribe`` frames (``summary``, Zipf keys as in ``bench.fanout``)
  together on a fresh server; each (connection, key) is one sample, subscribe -> snapshot.
  Target: p50 <= 0.4 s. The benchmark's connections share one account, standing in for many:
  its per-account new-key quotas are raised for it (``QUARTSIG_EARLY_KEYS_PER_MINUTE``,
  ``QUARTSIG_NEW_KEYS_PER_MINUTE``); the server-wide early-fetch budget is left as it is.

``--compare NAME=DIR`` runs every condition on the quartsig package in DIR too (another
checkout, e.g. ``git archive a551573 | tar -x -C /tmp/main``), alternating with this one in each
of ``--rounds`` rounds, fresh servers each time; medians over rounds are printed side by side.

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

#: One account stands in for the burst's many users: its per-account quotas must not bind.
QUOTAS = {"QUARTSIG_EARLY_KEYS_PER_MINUTE": "100000", "QUARTSIG_NEW_KEYS_PER_MINUTE": "100000",
          "QUARTSIG_EARLY_FETCHES_PER_ACCOUNT": "100000", "QUARTSIG_MAX_KEYS_PER_ACCOUNT": "0"}


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
    from quartsig.domain.timeframes import TIMEFRAMES

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


async def burst(url: str, clients: int, per: int, seed: int) -> list[float]:
    """Subscribe -> snapshot, ms, for every key of ``clients`` connections subscribing at once."""
    from websockets.asyncio.client import connect

    subs = subscriptions(clients, "summary", seed=seed, per=per)
    conns = []
    try:
        for _ in subs:
            ws = await connect(url, compression=None, max_size=None)
            conns.append(ws)
            await _until(ws, "authed")
        samples: list[float] = []
        missing: list[set[tuple[str, ...]]] = []
        seen: dict[int, list[Any]] = {}

        async def one(ws: Any, keys: list[list[str]]) -> None:
            waiting = {tuple(key) for key in keys}
            missing.append(waiting)
            started = time.perf_counter()
            await ws.send(orjson.dumps([orjson.loads(_op("subscribe", tuple(k))) for k in keys]
                                       ).decode())
            while waiting:
                raw = orjson.loads(await ws.recv())
                for m in raw if isinstance(raw, list) else [raw]:
                    seen.setdefault(id(waiting), []).append(m.get("type"))
                    if m.get("type") == "snapshot":
                        key = (m["symbol"], m["tf"], m["profile"])
                        if key in waiting:
                            waiting.discard(key)
                            samples.append((time.perf_counter() - started) * 1000)
                    elif m.get("type") == "error":
                        raise RuntimeError(m)

        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(one(ws, keys) for ws, keys in zip(conns, subs,
                                                                        strict=True)))
        except TimeoutError:
            lost = set().union(*missing)
            print([seen.get(id(w)) for w in missing if w], file=sys.stderr)
            print(f"  burst: no snapshot within 60 s for {sum(map(len, missing))} samples "
                  f"({len(lost)} keys, e.g. {sorted(lost)[:3]})", file=sys.stderr)
        return samples
    finally:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


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
    parser.add_argument("--burst", default="", metavar="CLIENTSxKEYS",
                        help="also a burst of CLIENTS fresh connections x KEYS keys, e.g. 300x5")
    parser.add_argument("--interval", type=float, default=2.0, help="QUARTSIG_INTERVAL")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variant", metavar="DIR", type=Path,
                        help="serve the quartsig package in DIR (another checkout), for A/B runs")
    parser.add_argument("--compare", metavar="NAME=DIR", action="append", default=[],
                        help="also run every condition on the quartsig package in DIR, as NAME")
    args = parser.parse_args(argv)
    if args.variant is not None:
        VARIANTS["quartsig"] = args.variant.resolve()
    kinds = ["quartsig"]
    for item in args.compare:
        name, _, where = item.partition("=")
        VARIANTS[f"quartsig-{name}"] = Path(where).resolve()
        kinds.append(f"quartsig-{name}")
    hard = raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="quartsig-latency-"))
    # (kind, condition, sample kind) -> per-round lists of samples
    results: dict[tuple[str, str, str], list[list[float]]] = {}
    scanner: dict[tuple[str, str], list[float]] = {}

    def record(kind: str, condition: str, what: str, values: list[float]) -> None:
        results.setdefault((kind, condition, what), []).append(values)

    with Stack.start(work, args.interval, 1.0) as stack:
        stack.env.update(QUOTAS)
        clients = Clients(args.procs, work)
        try:
            for round_ in range(args.rounds):
                for seed, background in enumerate(int(x) for x in args.background.split(",")
                                                  if x):  # fmt: skip
                    for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                        http_json("POST", f"{stack.standin_url}/_standin/config",
                                  {"step_every": None})
                        server = Server(kind, stack)
                        try:
                            if background:
                                got = clients.connect(server.port, server.path, True,
                                                      subscriptions(background, "summary"))
                                print(f"  {kind}: {got['connected']} background connections",
                                      file=sys.stderr)
                                http_json("POST", f"{stack.standin_url}/_standin/config",
                                     {"step_every": args.interval})  # fmt: skip
                            url = f"ws://127.0.0.1:{server.port}{server.path}"
                            out = asyncio.run(sample(url, stack, args.cached, args.new,
                                                     seed + 10 * round_))
                            record(kind, str(background), "cached", out["cached"])
                            record(kind, str(background), "new (nobody had it)", out["new"])
                            scanner.setdefault((kind, str(background)), []).extend(
                                out["scanner"])
                            clients.all({"op": "close"})
                        finally:
                            server.stop()
                if args.burst:
                    count, _, per = args.burst.partition("x")
                    for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                        http_json("POST", f"{stack.standin_url}/_standin/config",
                                  {"step_every": None})
                        server = Server(kind, stack)
                        try:
                            url = f"ws://127.0.0.1:{server.port}{server.path}"
                            values = asyncio.run(burst(url, int(count), int(per or 5),
                                                       100 + round_))
                            record(kind, f"burst {args.burst}", "new (nobody had it)", values)
                        finally:
                            server.stop()
        finally:
            clients.close()
    lines = [
        f"latency: QUARTSIG_INTERVAL={args.interval:g} s; {args.rounds} round(s), fresh server "
        f"per condition and round, servers alternating; RLIMIT_NOFILE {hard}; logs in {work}",
        "",
        "| server | condition | key | samples | p50 ms | p99 ms | max ms | p50 per round | "
        "p99 per round | scanner's own latency p50 / max ms |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for (kind, condition, what), rounds in sorted(results.items(),
                                                  key=lambda item: (item[0][1], item[0][2],
                                                                    item[0][0])):  # fmt: skip
        p50s = [statistics.median(r) for r in rounds if r]
        p99s = [percentile(r, 99) for r in rounds if r]
        if not p50s:
            continue
        own = scanner.get((kind, condition), [])
        extra = (f"{statistics.median(own):.1f} / {max(own):.1f}"
                 if own and not condition.startswith("burst") else "-")  # fmt: skip
        lines.append(
            f"| {kind} | {condition} | {what} | {sum(len(r) for r in rounds)} | "
            f"{statistics.median(p50s):.1f} | {statistics.median(p99s):.1f} | "
            f"{max(max(r) for r in rounds if r):.1f} | "
            f"{' '.join(f'{v:.0f}' for v in p50s)} | {' '.join(f'{v:.0f}' for v in p99s)} | "
            f"{extra} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
