"""The cluster mode, measured: one process against two, and what crossing nodes costs.

    python -m bench.cluster [--clients 10000] [--rounds 3] [--ticks 3] [--procs 2]
                            [--new 30] [--redis redis://127.0.0.1:6379/0]

Needs a Redis (each round uses its own key prefix). On 127.0.0.1, with the stand-in scanner:

1. **One box, one port**: ``quartsig serve`` with ``workers = 1`` (no Redis: today's single
   process) against ``workers = 2`` (Redis: one collector elected between them), given the same
   ``--clients`` browser-like connections with 5 ``summary`` keys each (``bench.clients``
   processes). Printed: new connections per second while they all connect, fan-out p50/p99 per
   tick (frame arrival - the tick's ``ts``), and upstream requests per tick.
2. **Across nodes**: a leader and a follower (two ``quartsig serve`` on two ports), 1 000
   connections on the follower only. A tick's latency there is the leader's fetch-to-publish,
   Redis, and the follower's diff, encode and send: the price of the second node.
3. **First data on a follower**: a sampler subscribes, one at a time, to ``full`` keys nobody
   had, on the follower; subscribe -> snapshot, with the scanner's own time per request beside
   it, against the same on a standalone node.

Ratios are within a round (same machine state), then the median over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.clients import raise_nofile
from bench.fanout import PY, REPO, Clients, Stack, _await_tick, subscriptions
from bench.latency import _time_snapshot
from tests.support.measure import percentile
from tests.support.net import free_port, wait_until
from tests.support.processes import stop_process


@dataclass
class Node:
    process: subprocess.Popen[Any]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any]:
        import json

        with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
            return dict(json.loads(response.read()))


@contextlib.contextmanager
def node(stack: Stack, workers: int, redis: str | None, prefix: str,
         name: str) -> Iterator[Node]:
    config = stack.work / f"hypercorn-{name}.toml"
    config.write_text(f'workers = {workers}\nworker_class = "uvloop"\ngraceful_timeout = 5\n'
                      "websocket_max_message_size = 65536\n")
    env = dict(stack.env)
    if redis:
        env.update(QUARTSIG_REDIS_URL=redis, QUARTSIG_REDIS_PREFIX=prefix)
    port = free_port()
    with open(stack.work / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            [PY, "-m", "quartsig", "serve", "--bind", f"127.0.0.1:{port}",
             "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    made = Node(process, port)
    try:
        wait_until(lambda: made.health()["status"] == "ok", 60, what=f"quartsig serve ({name})")
        yield made
    finally:
        stop_process(process)


def _tick_latencies(stack: Stack, clients: Clients, expected: int, ticks: int,
                    interval: float) -> tuple[list[float], list[float], list[int]]:
    p50s, p99s, requests = [], [], []
    last = int(time.time() * 1000)
    for _ in range(ticks):
        clients.all({"op": "reset"})
        before = len(stack.scans())
        stack.step()
        ts = _await_tick(clients, expected, last, timeout=interval + 30)
        if ts is None:
            print("  ! a tick never arrived", file=sys.stderr)
            continue
        last = ts
        lat, _ = clients.collect()
        p50s.append(percentile(lat[ts], 50))
        p99s.append(percentile(lat[ts], 99))
        time.sleep(interval)  # let the next tick pass: count one whole tick's requests
        requests.append(len(stack.scans()) - before)
    return p50s, p99s, requests


def one_box(stack: Stack, clients: Clients, subs: list[Any], workers: int, redis: str,
            ticks: int, interval: float) -> dict[str, float]:
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    with node(stack, workers, redis if workers > 1 else None, prefix, f"w{workers}") as served:
        time.sleep(1.0)
        connected = clients.connect(served.port, f"/ws?token={stack.token}", True, subs)
        rate = connected["connected"] / max(connected["seconds"], 1e-9)
        time.sleep(interval + 1.5)
        p50s, p99s, requests = _tick_latencies(stack, clients, connected["connected"], ticks,
                                               interval)
        clients.all({"op": "close"})
    return {"connected": connected["connected"], "rate": rate,
            "p50": statistics.median(p50s) if p50s else float("nan"),
            "p99": statistics.median(p99s) if p99s else float("nan"),
            "requests": statistics.median(requests) if requests else float("nan")}


def across(stack: Stack, clients: Clients, redis: str, ticks: int,
           interval: float) -> dict[str, float]:
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    with node(stack, 1, redis, prefix, "leader") as leader:
        wait_until(lambda: leader.health()["role"] == "leader", 30, what="the leader")
        with node(stack, 1, redis, prefix, "follower") as follower:
            subs = subscriptions(1000, "summary", seed=11)
            connected = clients.connect(follower.port, f"/ws?token={stack.token}", True, subs)
            time.sleep(interval + 1.5)
            p50s, p99s, _ = _tick_latencies(stack, clients, connected["connected"], ticks,
                                            interval)
            clients.all({"op": "close"})
    return {"p50": statistics.median(p50s), "p99": statistics.median(p99s)}


async def _first_data(url: str, keys: list[tuple[str, str, str]]) -> list[float]:
    from websockets.asyncio.client import connect

    samples = []
    async with connect(url, compression=None, max_size=None) as ws:
        for key in keys:
            samples.append(await _time_snapshot(ws, key))
            await asyncio.sleep(random.uniform(0.1, 0.6))  # land anywhere in the tick cycle
    return samples


def first_data(stack: Stack, redis: str, new: int, seed: int) -> dict[str, list[float]]:
    from quartsig.demo.market import DEFAULT_UNIVERSE, NO_TECHNICALS
    from quartsig.domain.timeframes import TIMEFRAMES

    rng = random.Random(seed)
    symbols = sorted(s for g in DEFAULT_UNIVERSE.values() for s in g if s not in NO_TECHNICALS)
    fresh = [(s, tf, "full") for s in symbols for tf in TIMEFRAMES]
    rng.shuffle(fresh)
    out: dict[str, list[float]] = {}
    with node(stack, 1, None, "", "standalone") as alone:
        ws = alone.url.replace("http", "ws") + f"/ws?token={stack.token}"
        out["standalone"] = asyncio.run(_first_data(ws, fresh[:new]))
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    with node(stack, 1, redis, prefix, "leader2") as leader:
        wait_until(lambda: leader.health()["role"] == "leader", 30, what="the leader")
        with node(stack, 1, redis, prefix, "follower2") as follower:
            ws = follower.url.replace("http", "ws") + f"/ws?token={stack.token}"
            out["follower"] = asyncio.run(_first_data(ws, fresh[new:2 * new]))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--new", type=int, default=30)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="quartsig-bench-") as tmp:
        work = Path(tmp)
        subs = subscriptions(args.clients, "summary")
        with Stack.start(work, args.interval, change_share=1.0) as stack:
            clients = Clients(args.procs, work)
            try:
                boxes: list[tuple[dict[str, float], dict[str, float]]] = []
                for _ in range(args.rounds):
                    one = one_box(stack, clients, subs, 1, args.redis, args.ticks, args.interval)
                    two = one_box(stack, clients, subs, 2, args.redis, args.ticks, args.interval)
                    boxes.append((one, two))
                    print(f"  round: 1 proc {one}\n         2 procs {two}", file=sys.stderr)
                hop = across(stack, clients, args.redis, args.ticks, args.interval)
            finally:
                clients.close()
            firsts = first_data(stack, args.redis, args.new, seed=5)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"\n## One box: {args.clients} connections x 5 summary keys, medians of "
          f"{args.rounds} rounds\n")
    print("| | 1 process | 2 processes (Redis) | 2 / 1 |\n|---|---:|---:|---:|")
    for name, label, unit in (("rate", "new connections/s", ""), ("p50", "fan-out p50", " ms"),
                              ("p99", "fan-out p99", " ms"),
                              ("requests", "upstream requests per tick", "")):
        a, b = med([r[0][name] for r in boxes]), med([r[1][name] for r in boxes])
        ratio = med([r[1][name] / r[0][name] for r in boxes if r[0][name]])
        print(f"| {label} | {a:.1f}{unit} | {b:.1f}{unit} | {ratio:.2f}x |")
    print(f"\n## Across nodes: a leader's tick, 1 000 connections on the follower\n\n"
          f"p50 {hop['p50']:.1f} ms, p99 {hop['p99']:.1f} ms (target p99 <= 100 ms)")
    print("\n## First data for a key nobody had (subscribe -> snapshot, ms)\n")
    print("| where | n | p50 | p99 | max |\n|---|---:|---:|---:|---:|")
    for where, values in firsts.items():
        print(f"| {where} | {len(values)} | {med(values):.0f} | {percentile(values, 99):.0f} | "
              f"{max(values):.0f} |")


if __name__ == "__main__":
    main()
