"""WebSocket clients for tests against a real server, in three kinds:

- :class:`Client`: records every message with its arrival time in a background reader, for
  scenarios that watch many clients at once (hardening, faults, secrets);
- the functions :func:`client`, :func:`send`, :func:`frame`, :func:`until`, :func:`quiet`,
  :func:`close_of`: one ``websockets`` connection read in step by the test (the protocol
  contract, tests/test_e2e.py);
- :class:`RawClient`: a blocking socket with a tiny receive buffer driven by ``wsproto``, so
  that not reading really stops reading (TCP's window closes).

bench/clients.py's load clients are a fourth kind on purpose: thousands per process, on
bare ``asyncio.Protocol`` (their bytes come from :mod:`tests.support.wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from quartsig.domain.model import Key
from tests.support.stack import TG_ID, Stack

State = dict[Key, dict[str, Any]]


@dataclass
class Client:
    """One recording client. ``messages`` holds ``(monotonic time, message)``."""

    url: str
    token: str
    ws: ClientConnection | None = None
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    reader: asyncio.Task[None] | None = None
    got: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, **kwargs: Any) -> Client:
        self.ws = await connect(f"{self.url}?token={self.token}", compression=None,
                                open_timeout=10, **kwargs)
        self.reader = asyncio.get_running_loop().create_task(self._read())
        await self.wait_for(lambda m: m["type"] == "authed")
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for frame in self.ws:
                now = time.monotonic()
                value = orjson.loads(frame)
                for message in value if isinstance(value, list) else [value]:
                    self.messages.append((now, message))
                self.got.set()
        except ConnectionClosed:
            pass
        finally:
            if self.ws.close_code is not None:
                self.close_code = self.ws.close_code
                self.close_reason = self.ws.close_reason or ""
            self.got.set()

    async def send(self, *messages: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(orjson.dumps(list(messages) if len(messages) > 1 else messages[0])
                           .decode())

    async def subscribe(self, symbol: str, tf: str, profile: str = "full") -> None:
        await self.send({"op": "subscribe", "symbol": symbol, "tf": tf, "profile": profile})

    async def wait_for(self, predicate: Any, *, since: int = 0, within: float = 10.0
                       ) -> dict[str, Any]:
        """The first message from index ``since`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + within
        index = since
        while True:
            while index < len(self.messages):
                message = self.messages[index][1]
                index += 1
                if predicate(message):
                    return message
            if self.reader is not None and self.reader.done():
                raise AssertionError(f"closed ({self.close_code}) before the message came")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = [m for _, m in self.messages[-5:]]
                raise AssertionError(f"no matching message within {within}s; last: {tail}")
            self.got.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self.got.wait()

    def state(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Each key's data as a client applying snapshots and updates in order holds it."""
        held: dict[tuple[str, str, str], dict[str, Any]] = {}
        for _, message in self.messages:
            key = (message.get("symbol"), message.get("tf"), message.get("profile"))
            if message["type"] == "snapshot":
                held[key] = dict(message["data"])  # type: ignore[index]
            elif message["type"] == "update":
                held[key].update(message["data"])  # type: ignore[index]
        return held

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reader, 3)


async def client(stack: Stack, tg_id: int | None = TG_ID, **options: Any) -> ClientConnection:
    """An authenticated (first-frame auth) websockets client; ``tg_id=None``: not authed."""
    ws = await connect(stack.ws_url, ping_interval=None, open_timeout=5, **options)
    if tg_id is not None:
        await send(ws, {"op": "auth", "token": await stack.token_for(tg_id)})
        messages = await frame(ws)
        assert messages[0] == {"type": "authed", "tg_id": tg_id}  # nothing comes before it
        if messages[1:]:
            _unread[ws] = messages[1:]
    return ws


async def send(ws: ClientConnection, message: Any) -> None:
    await ws.send(orjson.dumps(message).decode())


def target(symbol: str, tf: str, profile: str = "full") -> dict[str, str]:
    return {"symbol": symbol, "tf": tf, "profile": profile}


#: Messages read from a frame but not yet consumed, per connection (a frame may hold many).
_unread: dict[ClientConnection, list[dict[str, Any]]] = {}


async def frame(ws: ClientConnection, within: float = 5.0) -> list[dict[str, Any]]:
    """The messages of the next frame (or what is left unread of the last one)."""
    left = _unread.pop(ws, None)
    if left:
        return left
    async with asyncio.timeout(within):
        value = orjson.loads(await ws.recv())
    return value if isinstance(value, list) else [value]


async def until(
    ws: ClientConnection,
    wanted: Callable[[dict[str, Any]], bool],
    within: float = 5.0,
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Read until a message matches ``wanted``; every message read lands in ``seen``.
    Messages after the match in the same frame stay unread for the next call."""
    async with asyncio.timeout(within):
        while True:
            messages = await frame(ws, within)
            for n, message in enumerate(messages):
                if seen is not None:
                    seen.append(message)
                if wanted(message):
                    if messages[n + 1 :]:
                        _unread[ws] = messages[n + 1 :]
                    return message


def is_(type: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == type and all(m.get(k) == v for k, v in fields.items())


async def quiet(ws: ClientConnection, idle: float) -> list[dict[str, Any]]:
    """Read until nothing arrives for ``idle`` seconds."""
    got: list[dict[str, Any]] = []
    while True:
        try:
            got.extend(await frame(ws, idle))
        except TimeoutError:
            return got


async def close_of(ws: ClientConnection, within: float = 5.0) -> tuple[int | None, str | None]:
    """Read until the server closes; its close code and reason."""
    async def drain() -> None:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()

    with pytest.raises(websockets.ConnectionClosed):
        await drain()
    assert ws.close_code is not None, "the connection closed without a close frame"
    return ws.close_code, ws.close_reason


def key_of(message: dict[str, Any]) -> Key:
    return Key(message["profile"], message["symbol"], message["tf"])


def apply(state: State, messages: list[dict[str, Any]]) -> None:
    """Apply snapshots and updates in order, as a client does."""
    for message in messages:
        if message["type"] == "snapshot":
            state[key_of(message)] = dict(message["data"])
        elif message["type"] == "update":
            state[key_of(message)].update(message["data"])



class RawClient:
    """A websocket client on a plain blocking socket with a tiny receive buffer, so that
    not calling :meth:`read` really stops reading (TCP's window closes)."""

    def __init__(self, port: int, token: str, rcvbuf: int = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[dict[str, Any]] = []
        self.frames = 0
        self.close_code: int | None = None
        self.eof = False
        self._text: list[str] = []
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{port}", target="/ws")))
        self.read(5.0, until=lambda: self.accepted)
        self.send({"op": "auth", "token": token})

    accepted = False

    def send(self, message: Any) -> None:
        self.sock.sendall(self.ws.send(TextMessage(orjson.dumps(message).decode())))

    def read(self, within: float, until: Callable[[], bool] | None = None,
             idle: float | None = None) -> None:  # fmt: skip
        """Read for ``within`` seconds at most; stop early when ``until()`` holds, or when
        nothing arrived for ``idle`` seconds, or at the close / end of the stream."""
        deadline = time.monotonic() + within
        while not self.eof and self.close_code is None:
            if until is not None and until():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(min(left, idle) if idle else left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if idle:
                    return
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                self.ws.receive_data(None)
            else:
                self.ws.receive_data(data)
            self._events()

    def _events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
                self.response = event
            elif isinstance(event, RejectConnection):
                raise AssertionError(f"handshake refused: {event.status_code}")
            elif isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    self.frames += 1
                    value = orjson.loads("".join(self._text))
                    self._text.clear()
                    self.messages.extend(value if isinstance(value, list) else [value])
            elif isinstance(event, Ping):
                with contextlib.suppress(OSError):
                    self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                with contextlib.suppress(Exception):
                    self.sock.sendall(self.ws.send(event.response()))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
