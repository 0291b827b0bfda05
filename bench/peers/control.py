"""The stdin/stdout control loop shared by the peers."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any


async def control(handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        reply = await handle(json.loads(line))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def padded(size: int, ts: int, head: str = '{"type":"update","data":"') -> str:
    """A JSON text of ``size`` characters ending in ``"ts":<ts>}`` like quartsig's pieces."""
    tail = f'","ts":{ts}}}'
    return head + "x" * max(0, size - len(head) - len(tail)) + tail
