"""Hand-made WebSocket bytes (RFC 6455) for clients that must cost nothing or misbehave:
the flood (tests/support/flood.py), the stalled client of the hardening tests, and the
load clients of bench/clients.py."""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Iterable


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN, masked), as RFC 6455 requires of clients."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        mask = (key * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    else:
        body = b""
    return head + key + body


def upgrade_request(port: int, token: str | None = None, *, host: str = "127.0.0.1",
                    path: str = "/ws", headers: Iterable[str] = ()) -> bytes:
    """The HTTP upgrade request of a WebSocket client (``token`` in the query string)."""
    target = f"{path}?token={token}" if token else path
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
        "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        *headers,
    ]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
