"""Garbage frames (issue 20, point 3): how many error replies one socket can make the server
send, and how fast, before it is closed.

    python -m bench.garbage [--seconds 5] [--kind binary|json|empty|batch]
    PYTHONPATH=/tmp/main python -m bench.garbage    # the same against another checkout

One authenticated socket on the app in this process (Quart's test client: no network, so the
figure is the server's own cost, not the loopback's) sends garbage frames one after the other,
reading each answer, until it is closed or ``--seconds`` pass. Prints the replies, the time,
replies per second and how the socket ended.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet

GARBAGE = {
    "binary": b"\x00\x01",
    "json": "{",
    "empty": "[]",
    "batch": "[" + ",".join(["{}"] * 65) + "]",
}


async def _run(seconds: float, frame: str | bytes, data_dir: Path) -> tuple[int, float, str]:
    from quart.testing.connections import WebsocketDisconnectError

    from quartsig.access import accounts
    from quartsig.app import create_app

    app = create_app(data_dir=data_dir, demo=True, secret_keys=(Fernet.generate_key().decode(),),
                     interval=60.0)
    async with app.test_app() as test_app:
        await accounts.add(42)
        token = app.extensions["quartsig"].tokens.issue(42).token
        async with test_app.test_client().websocket(f"/ws?token={token}") as ws:
            await ws.receive()  # authed
            replies, started, ended = 0, time.perf_counter(), "still open"
            try:
                while time.perf_counter() - started < seconds:
                    await ws.send(frame)
                    await asyncio.wait_for(ws.receive(), 5)
                    replies += 1
            except WebsocketDisconnectError as closed:
                ended = f"closed {closed.args[0]}"
            return replies, time.perf_counter() - started, ended


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.garbage", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="stop measuring after this")
    parser.add_argument("--kind", choices=sorted(GARBAGE), default="binary")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data_dir:
        replies, elapsed, ended = asyncio.run(_run(args.seconds, GARBAGE[args.kind],
                                                   Path(data_dir)))
    print(f"garbage={args.kind} replies={replies} seconds={elapsed:.2f} "
          f"replies_per_second={replies / elapsed:.0f} socket={ended}")


if __name__ == "__main__":
    main()
