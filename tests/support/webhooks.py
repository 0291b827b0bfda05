"""A real webhook receiver for the alerts' tests: an aiohttp server that checks Standard
Webhooks signatures on its own (its HMAC is written here, not imported from quartsig, so a
signing bug is not agreed with), records what arrived and answers as scripted.

    async with receiver(secret) as hook:
        hook.script("/a", [500, (429, {"Retry-After": "120"}), 200])
        ... POST to hook.url("/a") ...
        hook.received  # [Received(path, id, timestamp, body, valid), ...]

``hook.hold()`` keeps every request waiting, unanswered, until ``hook.release()``: a sender
can be killed mid-send. A held request whose sender went away meanwhile is not received
(the sender never learned it arrived, and will send it again): it is listed in
``hook.abandoned`` instead.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Answer = int | tuple[int, dict[str, str]]


@dataclass(frozen=True)
class Received:
    path: str
    id: str
    timestamp: int
    body: dict[str, Any]
    valid: bool  # the signature matched the secret and the timestamp was within 5 minutes


def expected_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret[len("whsec_"):])
    mac = hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body,
                   hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@dataclass
class Receiver:
    secret: str
    base: str = ""
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    #: Set on every request: tests wait on it instead of sleeping.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: While set, requests wait unanswered (see :meth:`hold`); how many are waiting.
    gate: asyncio.Event | None = None
    waiting: list[web.Request] = field(default_factory=list)
    abandoned: list[Received] = field(default_factory=list)

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.gate = None

    def gone(self) -> int:
        """Held requests whose sender has closed its connection (died)."""
        return sum(1 for r in self.waiting if r.transport is None or r.transport.is_closing())

    def url(self, path: str) -> str:
        return self.base + path

    def script(self, path: str, answers: list[Answer]) -> None:
        """Answer the next requests to ``path`` with these statuses (then 200)."""
        self.scripts[path] = list(answers)

    def valid(self, path: str | None = None) -> list[Received]:
        return [r for r in self.received if r.valid and (path is None or r.path == path)]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        stamp = request.headers.get("webhook-timestamp", "")
        signatures = request.headers.get("webhook-signature", "").split()
        fresh = stamp.isdigit() and abs(time.time() - int(stamp)) <= 300
        good = bool(msg_id) and fresh and any(
            hmac.compare_digest(s, expected_signature(self.secret, msg_id, stamp, body))
            for s in signatures)
        got = Received(request.path, msg_id, int(stamp or 0), json.loads(body or b"null"), good)
        if self.gate is not None:
            gate = self.gate
            self.waiting.append(request)
            try:
                await gate.wait()
            finally:
                self.waiting.remove(request)
            if request.transport is None or request.transport.is_closing():
                self.abandoned.append(got)
                return web.Response(status=503)
        self.received.append(got)
        self.arrived.set()
        if not good:
            return web.Response(status=401, text="bad signature")
        answers = self.scripts.get(request.path) or [200]
        answer = answers.pop(0) if self.scripts.get(request.path) else 200
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return web.Response(status=status, headers=headers)


@asynccontextmanager
async def receiver(secret: str) -> AsyncIterator[Receiver]:
    hook = Receiver(secret)
    app = web.Application()
    app.router.add_post("/{path:.*}", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hook.base = f"http://127.0.0.1:{port}"
    try:
        yield hook
    finally:
        await runner.cleanup()


@contextmanager
def threaded_receiver(secret: str) -> Iterator[Receiver]:
    """:func:`receiver` on its own event loop in a thread, for synchronous tests (a browser)."""
    loop = asyncio.new_event_loop()
    ready: Future[Receiver] = Future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with receiver(secret) as hook:
            ready.set_result(hook)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
