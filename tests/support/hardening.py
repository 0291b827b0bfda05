"""Helpers for the hardening suites: a real server stack and recording WebSocket clients.

``server_stack`` starts the stand-in scanner and ``quartsig serve`` as subprocesses, adds an
account and mints a token through the CLI; :class:`Client` is a ``websockets`` client that
records every message it receives with the time it arrived, so tests can assert on what a
browser would have seen (and when).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.processes import QuartsigServer, Standin, quartsig_cli, quartsig_env

TG_ID = 42


@dataclass
class Stack:
    standin: Standin
    server: QuartsigServer
    env: dict[str, str]
    token: str

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"

    def metric(self, name: str) -> float:
        return self.server.metrics().get(name, 0.0)


@contextlib.contextmanager
def server_stack(
    log_dir: Path, *, standin_args: tuple[str, ...] = (), **extra: str
) -> Iterator[Stack]:
    """Stand-in + ``quartsig serve`` (fast ticks) + account 42 and a token for it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with Standin.start(log_dir, *standin_args) as standin:
        env = quartsig_env(log_dir / "data", standin.url, **extra)
        quartsig_cli(env, "account", "add", str(TG_ID))
        token = quartsig_cli(env, "token", "issue", str(TG_ID)).strip()
        with QuartsigServer.start(env, log_dir) as server:
            yield Stack(standin, server, env, token)


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
