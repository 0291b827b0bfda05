"""A bare Quart ``/ws`` route under the same Hypercorn config as ``quartsig serve``.

    python -m bench.peers.quart_peer --port PORT [--decline-deflate]

Each connection is accepted, reads its one subscribe frame, gets ``{"type":"ok"}`` and
is kept in a set. ``{"op": "broadcast", "frame_size": S}`` on stdin builds ONE frame of S
characters (carrying ``"ts"``: the broadcast's start in Unix ms) and sends it to every
connection in turn with ``await ws.send(frame)``: no queue, no task per client, nothing
but the stack. ``--decline-deflate`` declines permessage-deflate exactly as
``quartsig serve`` does; without it, Hypercorn accepts it whenever a client offers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from quart import Quart, websocket

from bench.clients import raise_nofile
from bench.peers.control import control, padded
from quartsig.config import Settings
from quartsig.server import apply_stream_settings, decline_permessage_deflate, hypercorn_config

REPO = Path(__file__).resolve().parents[2]

app = Quart(__name__)
clients: set[Any] = set()


@app.websocket("/ws")
async def ws() -> None:
    await websocket.accept()
    await websocket.receive()  # the subscribe frame; a bare route has no subscriptions
    me = websocket._get_current_object()
    clients.add(me)
    try:
        await me.send('{"type":"ok"}')
        while True:
            await me.receive()
    finally:
        clients.discard(me)


async def handle(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "broadcast":
        t0 = time.time()
        frame = padded(int(message["frame_size"]), int(t0 * 1000))
        sent = 0
        for client in list(clients):
            try:
                await client.send(frame)
                sent += 1
            except Exception:
                pass
        return {"t0": t0, "frames": sent, "seconds": time.time() - t0}
    return {"connections": len(clients)}


async def main(args: argparse.Namespace) -> None:
    config = apply_stream_settings(
        hypercorn_config(REPO / "hypercorn.toml", f"127.0.0.1:{args.port}", {}), Settings.from_env()
    )
    stop = asyncio.Event()

    async def run_control() -> None:
        await control(handle)
        stop.set()

    task = asyncio.create_task(run_control())
    print(f"ready {os.getpid()}", flush=True)
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    task.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--decline-deflate", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)  # access log lines, as quartsig serve writes them
    raise_nofile()
    if args.decline_deflate:
        decline_permessage_deflate()
    import uvloop

    uvloop.run(main(args))
