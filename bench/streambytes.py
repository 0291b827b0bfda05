"""How many bytes the cluster's change stream holds in Redis for ``full`` ticks (#20).

    python -m bench.streambytes [--keys 2000] [--ticks 40] [--budget BYTES] [--redis URL]

One leader publishes ``--ticks`` full ticks of ``--keys`` ``full`` values (computed by the
built-in profile from random columns) under a fresh prefix, then prints the stream's entries,
its ``MEMORY USAGE``, bytes per entry, and what the old bound (2 000 entries, whatever their
size) would hold at that size. The prefix is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import redis.asyncio as aioredis

from quartsig.cluster.redis import STREAM_LENGTH
from quartsig.cluster.redisbroker import STREAM_BYTES, RedisBroker
from quartsig.domain.model import Batch, Key
from quartsig.domain.protocol import Vocabulary
from quartsig.domain.symbols import SCREENERS
from quartsig.plugins.loader import get_plugin_manager, load_profiles


class _Quiet:
    """A handler that holds nothing: the leader only writes."""

    def apply(self, batch: Batch) -> object:
        return None

    def watched(self) -> set[Key]:
        return set()

    def held(self) -> AbstractSet[Key]:
        return frozenset()

    async def asked(self) -> set[Key]:
        await asyncio.Event().wait()
        return set()


async def run(keys: int, ticks: int, budget: int, url: str) -> dict[str, Any]:
    profiles = load_profiles(get_plugin_manager(entry_points=False))
    full = profiles["full"]
    rng = random.Random(1)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    broker = RedisBroker(aioredis.Redis.from_url(url), _Quiet(),
                         Vocabulary(profiles=frozenset(profiles), screeners=SCREENERS),
                         prefix=prefix, lease_ttl=30.0, stream_bytes=budget)
    raw = aioredis.Redis.from_url(url)
    await broker.start()
    try:
        await asyncio.wait_for(broker.leadership(), 30)
        names = [Key("full", f"FX_IDC:T{n}", "1h") for n in range(keys)]
        for tick in range(ticks):
            values = [(key, full.compute({c: rng.uniform(-100, 100) for c in full.columns}),
                       tick) for key in names]
            assert await broker.publish(Batch(values=values))
        length = await raw.xlen(f"{prefix}changes")
        size = int(await raw.memory_usage(f"{prefix}changes", samples=0) or 0)
        latest = int(await raw.memory_usage(f"{prefix}latest", samples=0) or 0)
    finally:
        await broker.stop()
        found = await raw.keys(prefix + "*")
        if found:
            await raw.delete(*found)
        await raw.aclose()
    return {"entries": length, "bytes": size, "per_entry": size / max(1, length),
            "latest": latest}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--ticks", type=int, default=40)
    parser.add_argument("--budget", type=int, default=STREAM_BYTES)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    found = asyncio.run(run(args.keys, args.ticks, args.budget, args.redis))
    mib = 2**20
    print(f"{args.keys} full keys, {args.ticks} ticks, budget {args.budget / mib:.0f} MiB")
    print(f"stream now: {found['entries']} entries, {found['bytes'] / mib:.1f} MiB "
          f"({found['per_entry'] / 1024:.0f} KiB an entry); latest: "
          f"{found['latest'] / mib:.1f} MiB")
    print(f"the old bound ({STREAM_LENGTH} entries) at that size: "
          f"{STREAM_LENGTH * found['per_entry'] / mib:.0f} MiB")


if __name__ == "__main__":
    main()
