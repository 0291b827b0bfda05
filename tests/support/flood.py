"""A connect/disconnect flood from its own process:

    python -m tests.support.flood --port P --token T --seconds S [--concurrency 64] [--seed 0]
                                  [--only hangup|upgrade|subscribe|reset] [--rate R]

The flood must not be limited by the tool that makes it, and the test process
shares its core with everything else; so each flood process runs on uvloop with
bare ``asyncio.Protocol`` connections (no streams, no WebSocket library) and
prints one JSON line of counts when it is done. Each connection, by a seeded
draw, does one of:

- ``hangup`` (30 %): sends the upgrade request and closes at once;
- ``upgrade`` (40 %): waits for the response head, then closes;
- ``subscribe`` (15 %): as ``upgrade``, then sends a subscribe frame, then closes;
- ``reset`` (15 %): as ``subscribe``, then aborts the connection (RST, no FIN).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from tests.support.wire import mask_frame, upgrade_request

STYLES = (("hangup", 0.30), ("upgrade", 0.70), ("subscribe", 0.85), ("reset", 1.0))


class _Once(asyncio.Protocol):
    """One flood connection: writes the request, and settles ``done`` with the outcome."""

    def __init__(self, request: bytes, subscribe: bytes, style: str,
                 done: asyncio.Future[str]) -> None:
        self.request, self.subscribe, self.style, self.done = request, subscribe, style, done
        self.head = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] (uvloop's is no subclass)
        transport.write(self.request)
        if self.style == "hangup":
            transport.close()
            self._settle("hangup")

    def data_received(self, data: bytes) -> None:
        if self.done.done() or self.transport is None:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        if not self.head.startswith(b"HTTP/1.1 101"):
            self.transport.close()
            self._settle("refused")
            return
        if self.style in ("subscribe", "reset"):
            self.transport.write(self.subscribe)
        if self.style == "reset":
            self.transport.abort()
        else:
            self.transport.close()
        self._settle(self.style)

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle("dropped")

    def _settle(self, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


async def flood(port: int, token: str, seconds: float, concurrency: int, seed: int,
                only: str | None = None, rate: float | None = None,
                connections: int | None = None) -> dict[str, float]:
    """Closed loop (``rate`` None): ``concurrency`` workers, each starting its next
    connection when the last is done, so the server's pace sets the rate; with
    ``connections`` they stop once that many were started (``seconds`` is then a cap, so a
    busy machine takes longer instead of flooding less). Open loop: a
    new connection every ``1 / rate`` s whatever the server does (the excess waits in the
    listen backlog or is dropped by the kernel), at most ``concurrency`` in flight; the
    ones not started because of that cap count as ``skipped``."""
    loop = asyncio.get_running_loop()
    request = upgrade_request(port, token)
    subscribe = mask_frame(0x1, b'{"op":"subscribe","symbol":"EURUSD","tf":"1m"}')
    counts: dict[str, float] = {"connections": 0, "errors": 0}
    rng = random.Random(seed)
    stop_at = time.monotonic() + seconds

    async def one() -> None:
        draw = rng.random()
        style = only or next(name for name, upto in STYLES if draw < upto)
        done: asyncio.Future[str] = loop.create_future()
        transport = None
        try:
            async with asyncio.timeout(5):  # SYN retries included
                transport, _ = await loop.create_connection(
                    lambda: _Once(request, subscribe, style, done), "127.0.0.1", port)
                outcome = await done
        except (OSError, TimeoutError):
            outcome = "errors"
            if transport is not None:
                transport.abort()
        counts["connections"] += 1
        counts[outcome] = counts.get(outcome, 0) + 1

    started_count = 0

    async def worker() -> None:
        nonlocal started_count
        while time.monotonic() < stop_at and (connections is None
                                               or started_count < connections):
            started_count += 1
            await one()

    started = time.monotonic()
    if rate is None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        in_flight: set[asyncio.Task[None]] = set()
        launched = 0
        while (now := time.monotonic()) < stop_at:
            due = int((now - started) * rate) - launched
            launched += due
            for _ in range(due):
                if len(in_flight) >= concurrency:
                    counts["skipped"] = counts.get("skipped", 0) + 1
                    continue
                task = loop.create_task(one())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.sleep(0.001)
        await asyncio.gather(*in_flight)
    counts["elapsed"] = time.monotonic() - started
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.flood")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=64,
                        help="workers (closed loop) or the cap on connections in flight")
    parser.add_argument("--rate", type=float, help="open loop: new connections per second")
    parser.add_argument("--connections", type=int,
                        help="closed loop: stop after this many connections (--seconds caps it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=[name for name, _ in STYLES],
                        help="every connection in this style (to cost one style at a time)")
    args = parser.parse_args()
    import uvloop

    counts = uvloop.run(flood(args.port, args.token, args.seconds, args.concurrency, args.seed,
                                 args.only, args.rate, args.connections))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
