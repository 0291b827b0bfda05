"""A tick's frames straight to Hypercorn's stream, past Quart's and wsproto's per-send work.

An accepted :class:`quartsig.hosting.streams.Stream` offers itself in the ASGI scope
(``scope["extensions"][SEND_EXTENSION]``); :func:`text_sender` frames a text message itself and
hands the bytes to the stream's ``send`` (``H11Protocol.stream_send`` or
``H2Protocol.stream_send``), the same call Hypercorn's own ``_send_wsproto_event`` ends in (so
the same lock, write and drain). Quart's ``Websocket.send`` -> ``app_send`` -> wsproto path it
skips was 30 % of a bare Quart send (py-spy). No extension is ever negotiated on such a stream
(it declines them all), so wsproto's framing is :func:`frame_text`'s; a stream that is closing or
closed gets Quart's path, and its answer, unchanged. The instance attributes read here
(``closed``, ``state``, ``connection``, ``send``, ``stream_id``) are exercised on a real stream
by ``tests/test_hosting.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import ASGIWebsocketState
from wsproto.connection import ConnectionState

SEND_EXTENSION = "quartsig.direct_send"
"""The ASGI scope extension under which an accepted stream offers itself."""

_TEXT_FIN = 0x81  # FIN + opcode 1 (text); a server's frames are never masked (RFC 6455 5.1)


def frame_text(text: str) -> bytes:
    """``text`` as one final, unmasked text frame: wsproto's bytes with no extension active."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        return bytes((_TEXT_FIN, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", _TEXT_FIN, 126, size) + payload
    return struct.pack("!BBQ", _TEXT_FIN, 127, size) + payload


def text_sender(
    scope: Mapping[str, Any], fallback: Callable[[str], Awaitable[None]]
) -> Callable[[str], Awaitable[None]]:
    """The cheapest way to send text on this websocket: the stream's own send when the
    server offered it, else ``fallback`` (Quart's ``send``)."""
    stream = (scope.get("extensions") or {}).get(SEND_EXTENSION)
    if stream is None:
        return fallback
    return _DirectSend(stream, fallback)


class _DirectSend:
    """Unlike Quart's ``send``, this does not yield to the loop unless the socket is full:
    a caller sending to many clients in a row yields on its own. (A class with slots, not a
    ``functools.partial``: 150 B less for every connection.)"""

    __slots__ = ("fallback", "stream")

    def __init__(self, stream: Any, fallback: Callable[[str], Awaitable[None]]) -> None:
        self.stream = stream
        self.fallback = fallback

    async def __call__(self, text: str) -> None:
        stream = self.stream
        if (stream.closed or stream.state is not ASGIWebsocketState.CONNECTED
                or stream.connection.state is not ConnectionState.OPEN):
            await self.fallback(text)  # closing or closed: what Hypercorn does then (drop, raise)
            return
        await stream.send(Data(stream_id=stream.stream_id, data=frame_text(text)))
