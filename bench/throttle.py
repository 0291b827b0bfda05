"""Throttle manners (issue 14, finding 11): what a collector sends to a scanner that answers
every request 429, and when.

    python -m bench.throttle [--interval 4] [--seconds 8] [--retry-after N]
    PYTHONPATH=/tmp/main python -m bench.throttle    # the same against another checkout

One collector (this process, the scanner client's default retries) watching one key, against the
stand-in in this process with a sticky 429 fault (with ``Retry-After`` if asked). Prints the
request count and the start of each request relative to the first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Sequence

import quartsig
from quartsig.cluster.memory import MemoryBroker
from quartsig.domain.model import Key
from quartsig.domain.symbols import screener_for
from quartsig.fanout.handler import HubHandler
from quartsig.fanout.hub import Hub
from quartsig.feed.collector import Collector, CollectorSettings
from quartsig.plugins.loader import get_plugin_manager, load_profiles
from quartsig.upstream.scanner import ScannerClient
from tests.support.standin import STANDIN, serve_standin


class _Sink:
    def deliver(self, key: object, piece: object) -> None: ...

    def discard(self, key: object) -> None: ...

    def send(self, text: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


async def run(interval: float, seconds: float, retry_after: float | None) -> list[float]:
    runner, url = await serve_standin("127.0.0.1", 0, seed=1)
    standin = runner.app[STANDIN]
    fault: dict[str, object] = {"kind": "status", "status": 429, "sticky": True}
    if retry_after is not None:
        fault["retry_after"] = retry_after
    standin.add_faults([fault])
    hub = Hub()
    sink = _Sink()
    hub.attach(sink, 1)  # type: ignore[arg-type]
    hub.subscribe(sink, Key("summary", "FX_IDC:EURUSD", "1h"))  # type: ignore[arg-type]
    client = ScannerClient(url)
    await client.start()
    collector = Collector(MemoryBroker(HubHandler(hub)), load_profiles(get_plugin_manager(
        entry_points=False)), client, screener_for, CollectorSettings(interval=interval))
    task = asyncio.create_task(collector.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.close()
    times = [entry.time for entry in standin.log]
    await runner.cleanup()
    return [t - times[0] for t in times] if times else []


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--retry-after", type=float, default=None)
    args = parser.parse_args(argv)
    started = time.monotonic()
    starts = asyncio.run(run(args.interval, args.seconds, args.retry_after))
    print(f"quartsig from {quartsig.__file__}: interval {args.interval:g} s, "
          f"{time.monotonic() - started:.0f} s, every answer 429"
          + (f" (Retry-After {args.retry_after:g})" if args.retry_after is not None else "")
          + f": {len(starts)} requests; starts at "
          + ", ".join(f"{t:.1f}" for t in starts) + " s")


if __name__ == "__main__":
    main()
