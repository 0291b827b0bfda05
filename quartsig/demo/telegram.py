"""A Telegram Bot API stand-in: a test double for Telegram, as the scanner stand-in is for
TradingView.

It speaks the handful of methods quartsig's bot uses (``getMe``, ``setWebhook``,
``deleteWebhook``, ``getWebhookInfo``, ``getUpdates``, ``sendMessage``, ``editMessageText``,
``answerCallbackQuery``, ``setMyCommands``) at ``/bot<token>/<method>``, so aiogram reaches it
through ``TelegramAPIServer.from_base(standin.url)`` (``QUARTSIG_BOT_API_URL``). It records every
call, can push updates to the registered webhook with the secret header, and can be scripted per
chat to fail the way Telegram does (429 with ``parameters.retry_after``, 403 "bot was blocked by
the user", 400 "chat not found", 5xx, a hang that the client must time out).

It runs its own event loop in a thread, so a sync test (Playwright) and an async test (a Quart
app in the test's loop) use it the same way::

    with TelegramStandin.running() as telegram:
        telegram.script(42, ["429:2", "ok"])        # the next two sends to chat 42
        status = telegram.push(telegram.message(42, "/start"))   # -> the webhook's answer
        telegram.wait_sent(42, 1)                   # blocks until one message reached chat 42
        telegram.sent(42)[0]["text"]

With ``limits=True`` (or :meth:`TelegramStandin.enforce_limits`) it also enforces Telegram's
flood limits as Telegram does: a ``sendMessage`` that would make a chat's messages more than
``chat_limit`` (1) within ``window`` (1 s), or all chats' more than ``all_limit`` (30), is
answered 429 with ``parameters.retry_after``; :meth:`TelegramStandin.too_many` lists them.

``python -m quartsig.demo.telegram --port 0`` runs it on its own (it prints its URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-standin-token"
BOT = {"id": 123456, "is_bot": True, "first_name": "Quartsig", "username": "quartsig_test_bot"}
#: Seconds a scripted "timeout" answer hangs: longer than any client should wait.
HANG = 60.0
#: Methods whose ``chat_id`` the per-chat script applies to.
CHAT_METHODS = frozenset({"sendMessage", "editMessageText"})

ERRORS: dict[str, tuple[int, str]] = {
    "403": (403, "Forbidden: bot was blocked by the user"),
    "400": (400, "Bad Request: chat not found"),
    "500": (500, "Internal Server Error"),
    "502": (502, "Bad Gateway"),
}


@dataclass(frozen=True, slots=True)
class Call:
    """One request the stand-in answered (or refused): what a test asserts on."""

    method: str
    params: dict[str, Any]
    at: float
    status: int
    #: What a 200 answered with (``sendMessage``: the message, with its ``message_id``).
    result: Any = None


@dataclass
class _Poller:
    waiting: bool = False


@dataclass
class TelegramStandin:
    """The fake Bot API; see the module docstring. ``url`` is the base for ``from_base``."""

    token: str = TOKEN
    bot: dict[str, Any] = field(default_factory=lambda: dict(BOT))
    hang: float = HANG
    url: str = ""
    calls: list[Call] = field(default_factory=list)
    webhook_url: str = ""
    webhook_secret: str = ""
    #: Enforce Telegram's flood limits on sendMessage (see the module's doc).
    limits: bool = False
    chat_limit: int = 1
    all_limit: int = 30
    window: float = 1.0
    #: The limits' clock (tests move it instead of sleeping).
    clock: Callable[[], float] = time.monotonic
    _accepted: deque[tuple[float, int]] = field(default_factory=deque)
    _scripts: dict[int, deque[str]] = field(default_factory=dict)
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _update_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _message_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _poller: _Poller = field(default_factory=_Poller)
    #: Each is called with the stand-in's aiohttp app before it serves, to add routes beside
    #: the Bot API's (the demo's chat page: :mod:`quartsig.demo.telegramchat`).
    extensions: tuple[Callable[[web.Application, TelegramStandin], None], ...] = ()
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ what tests call

    def script(self, chat_id: int, answers: Iterable[str]) -> None:
        """Queue answers for the next calls to ``chat_id``: ``"ok"``, ``"429"`` or
        ``"429:<retry_after>"``, ``"403"``, ``"400"``, ``"500"``, ``"502"``, ``"timeout"``."""
        for answer in answers:
            if answer not in ERRORS and answer not in {"ok", "timeout"} and not (
                answer.startswith("429")
            ):
                raise ValueError(f"unknown scripted answer {answer!r}")
        with self._changed:
            self._scripts.setdefault(int(chat_id), deque()).extend(answers)

    def enforce_limits(self, on: bool = True) -> None:
        """Turn Telegram's flood limits on (or off) from now."""
        with self._changed:
            self.limits = on
            self._accepted.clear()

    def too_many(self) -> list[Call]:
        """The ``sendMessage`` calls answered 429 (scripted or over the limits)."""
        with self._changed:
            return [c for c in self.calls if c.method == "sendMessage" and c.status == 429]

    def calls_to(self, method: str) -> list[Call]:
        with self._changed:
            return [call for call in self.calls if call.method == method]

    def sent(self, chat_id: int) -> list[dict[str, Any]]:
        """The ``sendMessage`` parameters Telegram accepted for ``chat_id``, oldest first."""
        with self._changed:
            return [call.params for call in self.calls if call.method == "sendMessage"
                    and call.status == 200 and _chat(call.params) == int(chat_id)]

    def wait_sent(self, chat_id: int, count: int = 1, timeout: float = 30.0) -> list[
            dict[str, Any]]:
        """Block until ``count`` messages reached ``chat_id`` (AssertionError after
        ``timeout``: a bound for a busy machine, not a measurement)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(sent := self.sent(chat_id)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(sent)} of {count} messages reached {chat_id}")
                self._changed.wait(left)
            return sent

    async def await_sent(self, chat_id: int, count: int = 1) -> list[dict[str, Any]]:
        """:meth:`wait_sent` from async code (the event loop keeps running meanwhile)."""
        return await asyncio.to_thread(self.wait_sent, chat_id, count)

    def update(self, **body: Any) -> dict[str, Any]:
        """An update with the next ``update_id`` and ``body`` (``message=...``)."""
        return {"update_id": next(self._update_ids), **body}

    def message(self, user_id: int, text: str, *, username: str = "trader",
                update_id: int | None = None, first_name: str = "Test") -> dict[str, Any]:
        """A private-chat text message update from ``user_id`` (chat id = user id)."""
        user = {"id": user_id, "is_bot": False, "first_name": first_name, "username": username}
        body = {"message_id": next(self._message_ids), "date": int(time.time()),
                "chat": {"id": user_id, "type": "private"}, "from": user, "text": text}
        if text.startswith("/"):
            body["entities"] = [{"type": "bot_command", "offset": 0,
                                 "length": len(text.split()[0])}]
        update = self.update(message=body)
        if update_id is not None:
            update["update_id"] = update_id
        return update

    def callback(self, user_id: int, data: str, *,
                 message: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A button press from ``user_id`` with callback ``data``, on ``message`` (the
        ``sendMessage`` parameters of the bot's message it hangs under, e.g. one of
        :meth:`sent`) or on an old message Telegram no longer shows (none)."""
        user = {"id": user_id, "is_bot": False, "first_name": "Test"}
        query: dict[str, Any] = {"id": str(next(self._update_ids)), "from": user,
                                 "chat_instance": str(user_id), "data": data}
        if message is not None:
            query["message"] = {"message_id": int(message.get("message_id") or 1),
                                "date": int(time.time()),
                                "chat": {"id": user_id, "type": "private"},
                                "from": self.bot, "text": str(message.get("text", ""))}
        return self.update(callback_query=query)

    def push(self, update: Mapping[str, Any] | bytes, *, url: str | None = None,
             secret: str | None = None, timeout: float = 30.0) -> int:
        """POST ``update`` to the webhook (or ``url``) with the secret header, as Telegram
        does; the HTTP status. Blocking: from async code use :meth:`apush`."""
        target = url or self.webhook_url
        if not target:
            raise AssertionError("no webhook registered (setWebhook) and no url given")
        data = update if isinstance(update, bytes) else json.dumps(update).encode()
        request = urllib.request.Request(target, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        secret = self.webhook_secret if secret is None else secret
        if secret:
            request.add_header("X-Telegram-Bot-Api-Secret-Token", secret)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    async def apush(self, update: Mapping[str, Any] | bytes, **options: Any) -> int:
        return await asyncio.to_thread(lambda: self.push(update, **options))

    def enqueue(self, update: Mapping[str, Any]) -> None:
        """Hold ``update`` for ``getUpdates`` (long polling)."""
        with self._changed:
            self._updates.append(dict(update))
            self._changed.notify_all()

    # ------------------------------------------------------------------ running

    @classmethod
    @contextlib.contextmanager
    def running(cls, port: int = 0, **options: Any) -> Iterator[TelegramStandin]:
        """Serve on 127.0.0.1:``port`` (0: a free one) in a thread until the block ends."""
        standin = cls(**options)
        started = threading.Event()
        loop = asyncio.new_event_loop()
        standin._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(standin._start(port))
            started.set()
            loop.run_forever()
            loop.run_until_complete(standin._stop())
            _cancel_all(loop)  # a handler still hanging on a scripted "timeout", say
            loop.close()

        thread = threading.Thread(target=serve, name="telegram-standin", daemon=True)
        thread.start()
        if not started.wait(30):
            raise AssertionError("the Telegram stand-in did not start")
        try:
            yield standin
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)

    async def _start(self, port: int) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        for extend in self.extensions:
            extend(app, self)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{bound}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ the Bot API

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        if request.match_info["token"] != self.token:
            return self._record(method, params, 401, _error(401, "Unauthorized"))
        answer = self._next_answer(method, params)
        if answer == "timeout":
            self._record(method, params, 0, None)
            await asyncio.sleep(self.hang)
            return web.json_response(_error(504, "Gateway Timeout"), status=504)
        if answer.startswith("429"):
            retry = int(answer.partition(":")[2] or 1)
            body = _error(429, f"Too Many Requests: retry after {retry}")
            body["parameters"] = {"retry_after": retry}
            return self._record(method, params, 429, body)
        if answer in ERRORS:
            status, description = ERRORS[answer]
            return self._record(method, params, status, _error(status, description))
        if method == "getUpdates":
            return await self._get_updates(params)
        if method == "sendMessage" and (wait := self._over_limit(params)) is not None:
            body = _error(429, f"Too Many Requests: retry after {wait}")
            body["parameters"] = {"retry_after": wait}
            return self._record(method, params, 429, body)
        result = self._result(method, params)
        if result is None:
            return self._record(method, params, 404, _error(404, "Not Found: method not found"))
        return self._record(method, params, 200, {"ok": True, "result": result})

    def _next_answer(self, method: str, params: dict[str, Any]) -> str:
        if method not in CHAT_METHODS:
            return "ok"
        with self._changed:
            queue = self._scripts.get(_chat(params) or 0)
            return queue.popleft() if queue else "ok"

    def _over_limit(self, params: dict[str, Any]) -> int | None:
        """With limits on: None and the message counted, or the seconds to wait (>= 1) when
        it would exceed the chat's or the bot's limit within the window."""
        with self._changed:
            if not self.limits:
                return None
            now, chat = self.clock(), _chat(params) or 0
            while self._accepted and self._accepted[0][0] <= now - self.window:
                self._accepted.popleft()
            mine = [at for at, to in self._accepted if to == chat]
            full = (mine[-self.chat_limit] if len(mine) >= self.chat_limit else None,
                    self._accepted[-self.all_limit][0]
                    if len(self._accepted) >= self.all_limit else None)
            oldest = [at for at in full if at is not None]
            if oldest:
                return max(1, math.ceil(max(oldest) + self.window - now))
            self._accepted.append((now, chat))
            return None

    def _result(self, method: str, params: dict[str, Any]) -> Any:
        now = int(time.time())
        if method == "getMe":
            return self.bot
        if method in {"sendMessage", "editMessageText"}:
            return {"message_id": int(params.get("message_id") or next(self._message_ids)),
                    "date": now, "chat": {"id": _chat(params), "type": "private"},
                    "from": self.bot, "text": params.get("text", "")}
        if method == "setWebhook":
            with self._changed:
                self.webhook_url = str(params.get("url", ""))
                self.webhook_secret = str(params.get("secret_token", ""))
            return True
        if method == "deleteWebhook":
            with self._changed:
                self.webhook_url = self.webhook_secret = ""
            return True
        if method == "getWebhookInfo":
            with self._changed:
                pending = len(self._updates)
            return {"url": self.webhook_url, "has_custom_certificate": False,
                    "pending_update_count": pending}
        if method in {"answerCallbackQuery", "setMyCommands", "deleteMyCommands"}:
            return True
        return None

    async def _get_updates(self, params: dict[str, Any]) -> web.Response:
        if self.webhook_url:
            return self._record("getUpdates", params, 409, _error(
                409, "Conflict: can't use getUpdates method while webhook is active"))
        if self._poller.waiting:
            return self._record("getUpdates", params, 409, _error(
                409, "Conflict: terminated by other getUpdates request"))
        offset = int(params.get("offset") or 0)
        wait = min(float(params.get("timeout") or 0), 50.0)
        with self._changed:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        self._poller.waiting = True
        try:
            deadline = time.monotonic() + wait
            while True:
                with self._changed:
                    ready = list(self._updates)
                if ready or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
        finally:
            self._poller.waiting = False
        return self._record("getUpdates", params, 200, {"ok": True, "result": ready})

    def _record(self, method: str, params: dict[str, Any], status: int,
                body: dict[str, Any] | None) -> web.Response:
        with self._changed:
            result = body.get("result") if body is not None and status == 200 else None
            self.calls.append(Call(method, params, time.monotonic(), status, result))
            self._changed.notify_all()
        return web.json_response(body, status=status or 504)


def _error(code: int, description: str) -> dict[str, Any]:
    return {"ok": False, "error_code": code, "description": description}


def _chat(params: Mapping[str, Any]) -> int | None:
    try:
        return int(params["chat_id"])
    except (KeyError, TypeError, ValueError):
        return None


async def _params(request: web.Request) -> dict[str, Any]:
    """The call's parameters, whatever the encoding (aiogram sends multipart form fields,
    nested values as JSON text; others send JSON or a query string)."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json() if request.can_read_body else {}
        params.update(body if isinstance(body, dict) else {})
        return params
    form = await request.post()
    for key, value in form.items():
        text = value if isinstance(value, str) else ""
        if text[:1] in "[{":
            with contextlib.suppress(ValueError):
                params[key] = json.loads(text)
                continue
        params[key] = text
    return params


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on the stand-in's loop and let it end, as ``asyncio.run`` does: a
    task left pending when the loop closes is only reported, as destroyed, when it is
    garbage collected, in whatever test runs then."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with TelegramStandin.running(args.port) as standin:
        print(standin.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()

