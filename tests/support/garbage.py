"""What a bug, an old version or an intruder could leave in the cluster's Redis: one bad entry
in every structure quartsig reads (#20's ``ZADD quartsig:demand 9999999999999 bad`` first)."""

from __future__ import annotations

from typing import Any

import orjson

WATCHED = "summary|FX_IDC:EURUSD|1h"


async def forge(client: Any, prefix: str = "quartsig:", watched: str = WATCHED) -> None:
    """Write garbage into ``demand``, ``changes``, ``latest``, ``wanted`` and ``status``."""
    epoch = await client.get(f"{prefix}epoch")
    seq = int(await client.get(f"{prefix}seq") or 0)
    await client.zadd(f"{prefix}demand", {"bad": 9999999999999})
    await client.xadd(f"{prefix}changes", {"seq": seq + 1, "epoch": epoch or b"", "batch": "junk"})
    await client.xadd(f"{prefix}changes", {"nothing": "here"})
    await client.xadd(f"{prefix}changes", {"seq": 10**15, "epoch": epoch or b"", "batch": "{}"})
    await client.hset(f"{prefix}latest", "summary|FX_IDC:USDJPY|15m", "junk")
    await client.hset(f"{prefix}latest", watched,
                      b"99999999999999 " + orjson.dumps([{"Recommend.All": -9.0}, 1]))
    await client.xadd(f"{prefix}wanted", {"keys": "bad|key\nsummary|FX_IDC:EURUSD|1h"})
    await client.xadd(f"{prefix}wanted", {"what": "ever"})
    await client.set(f"{prefix}status", "junk")
