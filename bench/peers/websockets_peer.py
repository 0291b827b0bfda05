"""A minimal server on the ``websockets`` library, default settings (permessage-deflate on).

    python -m bench.peers.websockets_peer --port PORT

Each connection sends its subscribe frame (a JSON array of ``subscribe`` ops); the peer
keeps key -> connections. ``{"op": "broadcast", "piece_size": P}`` on stdin sends, for
every key, that key's update (P characters, carrying ``"ts"``) as its own frame to its
subscribers with ``websockets.broadcast()``: what a straightforward server would do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve

from bench.clients import raise_nofile
from bench.peers.control import control, padded

subscribers: dict[tuple[str, str, str], set[ServerConnection]] = {}
connections: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    keys = [(m["symbol"], m["tf"], m.get("profile", "full")) for m in json.loads(await ws.recv())]
    for key in keys:
        subscribers.setdefault(key, set()).add(ws)
    connections.add(ws)
    try:
        await ws.send('{"type":"ok"}')
        async for _ in ws:
            pass
    finally:
        connections.discard(ws)
        for key in keys:
            subscribers[key].discard(ws)


async def handle(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "broadcast":
        t0 = time.time()
        ts = int(t0 * 1000)
        size = int(message["piece_size"])
        frames = 0
        for key, conns in subscribers.items():
            if conns:
                head = f'{{"type":"update","symbol":"{key[0]}","tf":"{key[1]}","data":"'
                websockets.broadcast(conns, padded(size, ts, head))
                frames += len(conns)
        return {"t0": t0, "frames": frames, "seconds": time.time() - t0}
    return {"connections": len(connections)}


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port):
        print(f"ready {os.getpid()}", flush=True)
        await control(handle)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raise_nofile()
    import uvloop

    uvloop.run(main(args.port))
