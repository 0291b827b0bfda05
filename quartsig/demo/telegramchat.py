"""The demo's Telegram app: a chat page on the Telegram stand-in, to be the bot's user.

``quartsig serve --demo --bot`` has no Telegram behind its bot, only the stand-in of
:mod:`quartsig.demo.telegram`, so a newcomer needs a way to be the Telegram user: this page,
at ``/chat/<user id>`` on the stand-in. It shows the conversation as Telegram would (the bot's
HTML, its inline buttons: URL buttons as links, callback buttons that push a ``callback_query``),
and sends what is typed as a message update to the bot's webhook, with the secret header, as
Telegram does. The bot cannot tell it from Telegram: it is the same path as in production.

The page is plain HTML that works without script (forms post, the server redirects back); a
little vanilla JS posts them in place and follows the conversation by long polling. Everything
the bot wrote is escaped or, for its HTML, kept to Telegram's own tags; the page's CSP allows
no inline script. It answers only on loopback, to a loopback ``Host`` (a DNS-rebinding page
cannot reach it) and, for a POST, to its own ``Origin``.

The pure parts (the HTML, the conversation, the checks) come first; :func:`install` is the thin
aiohttp shell the stand-in calls (``TelegramStandin(extensions=(install,))``).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import itertools
import time
import urllib.error
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web

from quartsig.demo.telegram import Call, TelegramStandin

#: The Telegram user the demo's printed chat link speaks as (any id works: ``/chat/<id>``).
CHAT_USER = 42
#: The first name the demo's user has (the bot greets it).
FIRST_NAME = "Demo"
#: The demo bot's identity on the stand-in (``getMe``).
DEMO_BOT = {"id": 700000001, "is_bot": True, "first_name": "quartsig demo",
            "username": "quartsig_demo_bot"}
#: Telegram's limit on a message's text.
MAX_TEXT = 4096
#: Seconds one long poll of the conversation waits for something new.
POLL_WAIT = 20.0
#: Largest Telegram id (ids fit in 52 bits).
MAX_USER = 2**52

#: Telegram's HTML parse mode: these tags and nothing else (core.telegram.org/bots/api).
TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre",
                  "a", "span", "tg-spoiler", "blockquote", "tg-emoji"})
#: Schemes a link in a message or a URL button may have on the page.
SCHEMES = frozenset({"http", "https", "tg", "mailto"})

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


# ---------------------------------------------------------------------- Telegram's HTML


def safe_url(url: str) -> str | None:
    """``url`` when a link may point there (http, https, tg, mailto); None otherwise."""
    url = url.strip()
    scheme = urlsplit(url).scheme.lower()
    return url if scheme in SCHEMES and not any(c in url for c in "\r\n\t") else None


class _Telegram(HTMLParser):
    """Telegram's HTML as the page shows it: its tags kept (``a`` with a safe ``href`` only),
    every other tag dropped with its text kept, all text escaped, nothing left open."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in TAGS:
            return
        found = dict(attrs)
        if tag == "a":
            href = safe_url(found.get("href") or "")
            start = (f'<a href="{html.escape(href)}" target="_blank" rel="noopener noreferrer">'
                     if href else '<a>')
        elif tag == "tg-spoiler" or (tag == "span" and found.get("class") == "tg-spoiler"):
            tag, start = "span", '<span class="spoiler">'
        elif tag in {"span", "tg-emoji"}:
            tag, start = "span", "<span>"
        else:
            start = f"<{tag}>"
        self.open.append(tag)
        self.out.append(start)

    def handle_endtag(self, tag: str) -> None:
        tag = "span" if tag == "tg-emoji" or tag == "tg-spoiler" else tag
        if tag in self.open:
            while self.open:
                closing = self.open.pop()
                self.out.append(f"</{closing}>")
                if closing == tag:
                    break

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        self.out.append(html.escape(data, quote=False))

    def finish(self) -> str:
        self.close()
        self.out.extend(f"</{tag}>" for tag in reversed(self.open))
        self.open = []
        return "".join(self.out)


def telegram_html(text: str) -> str:
    """A message in Telegram's HTML parse mode, as safe HTML for the page."""
    parser = _Telegram()
    parser.feed(text)
    return parser.finish()


def plain_text(text: str) -> str:
    """A message's text without its markup (what Telegram hands the bot back)."""
    parser = _Telegram()
    parser.feed(text)
    parser.finish()
    return "".join(parser.text)


def message_html(params: Mapping[str, Any]) -> str:
    """The text of a ``sendMessage``/``editMessageText`` call as the page shows it."""
    text = str(params.get("text", ""))
    if str(params.get("parse_mode", "")).upper() == "HTML":
        return telegram_html(text)
    return html.escape(text, quote=False)


# ---------------------------------------------------------------------- the conversation


@dataclass(frozen=True, slots=True)
class Button:
    """One inline button: a link (``url``) or a callback (``data``)."""

    text: str
    url: str | None = None
    data: str | None = None


@dataclass(frozen=True, slots=True)
class Said:
    """Something of the user's side: a message they sent, or a notice about the page's own
    doings (a pressed button, a webhook that did not answer)."""

    at: float
    text: str
    kind: Literal["user", "notice"] = "user"


@dataclass(frozen=True, slots=True)
class Bubble:
    kind: Literal["user", "bot", "notice"]
    html: str
    message_id: int = 0
    keyboard: tuple[tuple[Button, ...], ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict)


def keyboard_of(markup: Any) -> tuple[tuple[Button, ...], ...]:
    """The inline keyboard of a ``reply_markup`` parameter (other markups show nothing)."""
    rows = markup.get("inline_keyboard") if isinstance(markup, Mapping) else None
    if not isinstance(rows, list):
        return ()
    return tuple(
        tuple(Button(str(b.get("text", "")), url=b.get("url"), data=b.get("callback_data"))
              for b in row if isinstance(b, Mapping))
        for row in rows if isinstance(row, list))


def _chat_of(params: Mapping[str, Any]) -> int | None:
    try:
        return int(params["chat_id"])
    except (KeyError, TypeError, ValueError):
        return None


def conversation(chat_id: int, said: Iterable[Said], calls: Iterable[Call],
                 callbacks: Mapping[str, int]) -> list[Bubble]:
    """The chat with ``chat_id`` as Telegram would show it, oldest first: the user's side
    (``said``) and what the bot got through (``calls`` the stand-in answered 200), merged in
    time. Edits change the message they name; an answered callback with a text shows as a
    notice (``callbacks``: the callback ids this page made, to their chat)."""
    events: list[tuple[float, Said | Call]] = [(entry.at, entry) for entry in said]
    events += [(call.at, call) for call in calls if call.status == 200]
    bubbles: list[Bubble] = []
    index: dict[int, int] = {}
    for _, event in sorted(events, key=lambda pair: pair[0]):
        if isinstance(event, Said):
            shown = html.escape(event.text, quote=False)
            bubbles.append(Bubble(event.kind, shown))
            continue
        params, method = event.params, event.method
        if method == "answerCallbackQuery":
            text = str(params.get("text") or "")
            if text and callbacks.get(str(params.get("callback_query_id"))) == chat_id:
                bubbles.append(Bubble("notice", html.escape(text, quote=False)))
            continue
        if _chat_of(params) != chat_id:
            continue
        if method == "sendMessage":
            result = event.result if isinstance(event.result, Mapping) else {}
            message_id = int(result.get("message_id") or 0)
            index[message_id] = len(bubbles)
            bubbles.append(Bubble("bot", message_html(params), message_id,
                                  keyboard_of(params.get("reply_markup")), params))
        elif method.startswith("editMessage") or method == "deleteMessage":
            at = index.get(int(params.get("message_id") or 0))
            if at is None:
                continue
            old = bubbles[at]
            if method == "deleteMessage":
                bubbles[at] = Bubble("notice", "(message deleted)")
            elif method == "editMessageText":  # Telegram drops the keyboard unless resent
                bubbles[at] = replace(old, html=message_html(params),
                                      keyboard=keyboard_of(params.get("reply_markup")),
                                      source={**old.source, **params})
            elif method == "editMessageReplyMarkup":
                bubbles[at] = replace(old, keyboard=keyboard_of(params.get("reply_markup")),
                                      source={**old.source, **params})
    return bubbles


def find_button(bubbles: Sequence[Bubble], message_id: int, data: str) -> Bubble | None:
    """The bot's message ``message_id`` if it offers a callback button with ``data``: the
    page sends only what the bot offered, as Telegram does."""
    for bubble in bubbles:
        if bubble.kind == "bot" and bubble.message_id == message_id and any(
                button.data == data for row in bubble.keyboard for button in row):
            return bubble
    return None


def user_of(chat_id: int, first_name: str = FIRST_NAME) -> dict[str, Any]:
    return {"id": chat_id, "is_bot": False, "first_name": first_name,
            "username": f"demo{chat_id}"}


def callback_query(callback_id: str, chat_id: int, bubble: Bubble, data: str,
                   bot: Mapping[str, Any]) -> dict[str, Any]:
    """The ``callback_query`` of an update: a press on one of ``bubble``'s buttons."""
    source = bubble.source
    message: dict[str, Any] = {
        "message_id": bubble.message_id, "date": int(time.time()),
        "chat": {"id": chat_id, "type": "private"}, "from": dict(bot),
        "text": plain_text(str(source.get("text", ""))),
    }
    if isinstance(source.get("reply_markup"), Mapping):
        message["reply_markup"] = source["reply_markup"]
    return {"id": callback_id, "from": user_of(chat_id), "message": message,
            "chat_instance": str(chat_id), "data": data}


# ---------------------------------------------------------------------- the page


def _button_html(chat_id: int, message_id: int, button: Button) -> str:
    label = html.escape(button.text)
    href = safe_url(button.url) if button.url else None
    if href is not None:
        return (f'<a class="button" href="{html.escape(href)}" target="_blank" '
                f'rel="noopener noreferrer" data-testid="url-button">{label}</a>')
    if button.data is not None:
        return (f'<form class="press" method="post" action="/chat/{chat_id}/callback">'
                f'<input type="hidden" name="message_id" value="{message_id}">'
                f'<input type="hidden" name="data" value="{html.escape(button.data)}">'
                f'<button type="submit" class="button" data-testid="callback-button">'
                f'{label}</button></form>')
    return f'<span class="button dead">{label}</span>'


def render(chat_id: int, bubbles: Sequence[Bubble]) -> str:
    """The conversation's ``<li>`` items (the page's ``<ol>`` holds them)."""
    if not bubbles:
        return ('<li class="notice" data-testid="empty">No messages yet: send /start to '
                'meet the bot.</li>')
    items = []
    for bubble in bubbles:
        keyboard = "".join(
            '<div class="row">' + "".join(_button_html(chat_id, bubble.message_id, button)
                                          for button in row) + "</div>"
            for row in bubble.keyboard)
        keyboard = f'<div class="keyboard">{keyboard}</div>' if keyboard else ""
        items.append(f'<li class="{bubble.kind}" data-testid="{bubble.kind}-message">'
                     f'<div class="text">{bubble.html}</div>{keyboard}</li>')
    return "\n".join(items)


def page(chat_id: int, bot: Mapping[str, Any], commands: Sequence[tuple[str, str]],
         items: str, version: int) -> str:
    """The whole chat page for user ``chat_id`` (``items``: :func:`render`'s)."""
    name = html.escape(str(bot.get("username") or bot.get("first_name") or "bot"))
    menu = "".join(
        f'<form method="post" action="/chat/{chat_id}/send">'
        f'<input type="hidden" name="text" value="/{html.escape(command)}">'
        f'<button type="submit" title="{html.escape(description)}" '
        f'data-testid="command">/{html.escape(command)}</button></form>'
        for command, description in commands)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@{name} - quartsig demo chat</title>
<link rel="stylesheet" href="/chat.css">
<script src="/chat.js" defer></script>
</head>
<body>
<header>
<h1>@{name}</h1>
<p>You are Telegram user <b data-testid="user">{chat_id}</b>. This page stands in for
Telegram in <code>quartsig serve --demo --bot</code>: what you send goes to quartsig's bot
through its webhook, as Telegram would send it. Put another number in the address to be
someone else.</p>
</header>
<main>
<ol class="log" data-testid="log" data-version="{version}" data-poll="/chat/{chat_id}/log"
 aria-live="polite">
{items}
</ol>
</main>
<footer>
<nav class="menu" aria-label="the bot's commands">{menu}</nav>
<form class="compose" method="post" action="/chat/{chat_id}/send" data-testid="compose">
<input name="text" maxlength="{MAX_TEXT}" autocomplete="off" required autofocus
 placeholder="Message (try /start)" aria-label="Message" data-testid="text">
<button type="submit" data-testid="send">Send</button>
</form>
</footer>
</body>
</html>
"""


def commands_of(calls: Sequence[Call]) -> list[tuple[str, str]]:
    """The bot's menu, from its last ``setMyCommands`` (Telegram's menu shows the same)."""
    for call in reversed(calls):
        if call.status == 200 and isinstance(call.params.get("commands"), list):
            return [(str(c.get("command", "")), str(c.get("description", "")))
                    for c in call.params["commands"] if isinstance(c, Mapping)]
    return []


def refusal(remote: str | None, host: str, origin: str | None) -> str | None:
    """Why a request may not reach the page (None: it may): it must come from loopback, name a
    loopback host (a DNS-rebinding page names its own), and a POST's ``Origin`` must be the
    page's own (no other site's form may speak as the user)."""
    try:
        if remote is None or not ipaddress.ip_address(remote.split("%")[0]).is_loopback:
            return "the chat page answers only on loopback"
    except ValueError:
        return "the chat page answers only on loopback"
    name = urlsplit(f"//{host}").hostname or ""
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return "the chat page answers only to a loopback Host"
    if origin is not None and origin != f"http://{host}":
        return "cross-origin request"
    return None


def chat_url(base: str, chat_id: int = CHAT_USER) -> str:
    return f"{base.rstrip('/')}/chat/{chat_id}"


# ---------------------------------------------------------------------- the shell


@dataclass
class Chats:
    """What the page adds to the stand-in's record: the users' side of each chat."""

    said: dict[int, list[Said]] = field(default_factory=dict)
    callbacks: dict[str, int] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: Set when the stand-in stops: long polls answer at once instead of being cut.
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, chat_id: int, text: str, kind: Literal["user", "notice"] = "user") -> None:
        self.said.setdefault(chat_id, []).append(Said(time.monotonic(), text, kind))

    def version(self, standin: TelegramStandin) -> int:
        """Grows whenever anything the page shows may have changed."""
        return len(standin.calls) + sum(len(entries) for entries in self.said.values())


CHATS = web.AppKey("chats", Chats)
STANDIN = web.AppKey("standin", TelegramStandin)
_SHOWN = ("sendMessage", "editMessageText", "editMessageReplyMarkup", "deleteMessage",
          "answerCallbackQuery")


def _standin(request: web.Request) -> TelegramStandin:
    return request.app[STANDIN]


def _chat_id(request: web.Request) -> int:
    try:
        chat_id = int(request.match_info["chat_id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such chat") from None
    if not 0 < chat_id < MAX_USER:
        raise web.HTTPNotFound(text="no such chat")
    return chat_id


def _bubbles(request: web.Request, chat_id: int) -> list[Bubble]:
    standin, chats = _standin(request), request.app[CHATS]
    calls = sorted((call for method in _SHOWN for call in standin.calls_to(method)),
                   key=lambda call: call.at)
    return conversation(chat_id, chats.said.get(chat_id, []), calls, chats.callbacks)


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/chat") and request.path not in {"/", "/favicon.ico"}:
        response: web.StreamResponse = await handler(request)
        return response
    origin = request.headers.get("Origin") if request.method == "POST" else None
    reason = refusal(request.remote, request.host, origin)
    if reason is not None:
        return web.Response(status=403, text=reason)
    response = await handler(request)
    response.headers.update({"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                             "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer"})
    return response


async def _root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"/chat/{CHAT_USER}")


async def _page(request: web.Request) -> web.Response:
    chat_id, standin = _chat_id(request), _standin(request)
    version = request.app[CHATS].version(standin)
    text = page(chat_id, standin.bot, commands_of(standin.calls_to("setMyCommands")),
                render(chat_id, _bubbles(request, chat_id)), version)
    return web.Response(text=text, content_type="text/html")


async def _log(request: web.Request) -> web.Response:
    """The conversation once it differs from version ``since`` (or after ``POLL_WAIT``)."""
    chat_id, standin, chats = _chat_id(request), _standin(request), request.app[CHATS]
    since = request.query.get("since", "")
    deadline = time.monotonic() + POLL_WAIT
    # The stand-in records under a threading.Condition (tests wait on it from other threads),
    # so the page looks every 0.1 s; the stand-in stopping ends the wait at once.
    while (str(chats.version(standin)) == since and time.monotonic() < deadline
           and not chats.closing.is_set()):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await chats.closing.wait()
    version = chats.version(standin)
    return web.json_response({"version": str(version),
                              "html": render(chat_id, _bubbles(request, chat_id))})


def _done(request: web.Request, chat_id: int) -> web.Response:
    """The script asked: a short JSON answer; a plain form: back to the page."""
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"ok": True})
    raise web.HTTPSeeOther(f"/chat/{chat_id}")


async def _deliver(request: web.Request, chat_id: int, update: Mapping[str, Any]) -> None:
    """Push ``update`` to the bot's webhook as Telegram would; a failure is a notice."""
    standin, chats = _standin(request), request.app[CHATS]
    if not standin.webhook_url:
        chats.add(chat_id, "Nobody receives this: the bot has not registered a webhook "
                           "(setWebhook) with this stand-in.", "notice")
        return
    try:
        status = await standin.apush(update, timeout=10.0)
    except (OSError, urllib.error.URLError) as error:
        chats.add(chat_id, f"The bot's webhook did not answer ({error}).", "notice")
        return
    if status != 200:
        chats.add(chat_id, f"The bot's webhook answered HTTP {status}.", "notice")


async def _send(request: web.Request) -> web.Response:
    chat_id, standin = _chat_id(request), _standin(request)
    form = await request.post()
    text = str(form.get("text") or "").strip()[:MAX_TEXT]
    if text:
        request.app[CHATS].add(chat_id, text)
        await _deliver(request, chat_id, standin.message(
            chat_id, text, username=f"demo{chat_id}", first_name=FIRST_NAME))
    return _done(request, chat_id)


async def _callback(request: web.Request) -> web.Response:
    chat_id, standin, chats = _chat_id(request), _standin(request), request.app[CHATS]
    form = await request.post()
    data = str(form.get("data") or "")
    try:
        message_id = int(str(form.get("message_id") or ""))
    except ValueError:
        raise web.HTTPBadRequest(text="message_id: must be an integer") from None
    bubble = find_button(_bubbles(request, chat_id), message_id, data)
    if bubble is None:
        raise web.HTTPBadRequest(text="the bot offers no such button")
    label = next(b.text for row in bubble.keyboard for b in row if b.data == data)
    callback_id = f"{chat_id}-{next(chats.ids)}"
    chats.callbacks[callback_id] = chat_id
    chats.add(chat_id, f"You pressed \u201c{label}\u201d.", "notice")
    await _deliver(request, chat_id, standin.update(
        callback_query=callback_query(callback_id, chat_id, bubble, data, standin.bot)))
    return _done(request, chat_id)


async def _no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204)  # the browser asks; a 404 would be a console error


def _static(name: str, content_type: str) -> Any:
    body = resources.files(__package__).joinpath(f"chat/{name}").read_bytes()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8")

    return serve


def install(app: web.Application, standin: TelegramStandin) -> None:
    """Add the chat page to the stand-in's app (``TelegramStandin(extensions=(install,))``)."""
    app[CHATS] = chats = Chats()
    app[STANDIN] = standin

    async def closing(app: web.Application) -> None:
        chats.closing.set()

    app.on_shutdown.append(closing)
    app.middlewares.append(_guard)
    app.router.add_get("/", _root)
    app.router.add_get("/favicon.ico", _no_icon)
    app.router.add_get("/chat.js", _static("chat.js", "text/javascript"))
    app.router.add_get("/chat.css", _static("chat.css", "text/css"))
    app.router.add_get("/chat/{chat_id}", _page)
    app.router.add_get("/chat/{chat_id}/log", _log)
    app.router.add_post("/chat/{chat_id}/send", _send)
    app.router.add_post("/chat/{chat_id}/callback", _callback)
