"""The demo's chat page on the Telegram stand-in (quartsig.demo.telegramchat): what it shows of
the bot's HTML, how it merges the conversation, who may reach it, and that what it sends reaches
a webhook exactly as Telegram's updates do (secret header, message and callback_query)."""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from quartsig.demo.telegram import TOKEN, Call, TelegramStandin
from quartsig.demo.telegramchat import (
    Bubble,
    Said,
    conversation,
    find_button,
    install,
    plain_text,
    refusal,
    render,
    telegram_html,
)
from tests.support.net import http_json, wait_until

SECRET = "s3cret-header-value"


# ---------------------------------------------------------------------- pure


def test_telegram_html_keeps_telegrams_tags_and_nothing_else() -> None:
    shown = telegram_html(
        '<b>bold</b> <script>alert(1)</script><img src=x onerror="alert(2)">'
        '<a href="javascript:alert(3)">js</a> <a href="https://e.example/?a=1&amp;b=&quot;2">ok</a>'
        ' &lt;3 <tg-spoiler>boo</tg-spoiler> <i>left open')
    assert "<script" not in shown and "<img" not in shown and "javascript:" not in shown
    assert shown.startswith("<b>bold</b> alert(1)")  # a foreign tag's text is kept, as text
    assert "<a>js</a>" in shown
    assert ('<a href="https://e.example/?a=1&amp;b=&quot;2" target="_blank" '
            'rel="noopener noreferrer">ok</a>') in shown
    assert "&lt;3" in shown and '<span class="spoiler">boo</span>' in shown
    assert shown.endswith("<i>left open</i>")  # nothing left open
    assert telegram_html("</b>stray</i>") == "stray"
    assert plain_text("<b>a &amp; b</b>") == "a & b"


def _call(method: str, at: float, result: Any = None, **params: Any) -> Call:
    return Call(method, params, at, 200, result)


def test_conversation_merges_both_sides_in_time_and_applies_edits() -> None:
    keyboard = {"inline_keyboard": [[{"text": "Mute", "callback_data": "mute:1"},
                                     {"text": "Board", "url": "http://127.0.0.1:8000/#t"}]]}
    calls = [
        _call("sendMessage", 2.0, {"message_id": 7}, chat_id=42, text="<b>hi</b>",
              parse_mode="HTML", reply_markup=keyboard),
        _call("sendMessage", 2.5, {"message_id": 8}, chat_id=99, text="someone else's"),
        _call("editMessageText", 4.0, True, chat_id=42, message_id=7, text="a < b"),
        _call("answerCallbackQuery", 5.0, True, callback_query_id="42-1", text="Muted"),
        _call("answerCallbackQuery", 5.1, True, callback_query_id="99-1", text="not ours"),
    ]
    said = [Said(1.0, "/start <me>"), Said(3.0, "You pressed it.", "notice")]
    bubbles = conversation(42, said, calls, {"42-1": 42, "99-1": 99})
    assert [(b.kind, b.html) for b in bubbles] == [
        ("user", "/start &lt;me&gt;"), ("bot", "a &lt; b"), ("notice", "You pressed it."),
        ("notice", "Muted")]
    assert bubbles[1].keyboard == ()  # editMessageText without reply_markup drops it

    before = conversation(42, said, calls[:1], {})
    assert find_button(before, 7, "mute:1") is before[1]
    assert find_button(before, 7, "forged") is None
    page = render(42, before)
    assert 'name="data" value="mute:1"' in page and 'data-testid="callback-button">Mute<' in page
    assert 'href="http://127.0.0.1:8000/#t" target="_blank"' in page
    assert render(42, [Bubble("bot", "x", 1, ())]).count("keyboard") == 0


@pytest.mark.parametrize(("remote", "host", "origin", "allowed"), [
    ("127.0.0.1", "127.0.0.1:5000", None, True),
    ("::1", "localhost:5000", "http://localhost:5000", True),
    ("127.0.0.1", "127.0.0.1:5000", "http://127.0.0.1:5000", True),
    ("10.1.2.3", "127.0.0.1:5000", None, False),  # not loopback
    ("127.0.0.1", "evil.example:5000", None, False),  # DNS rebinding
    ("127.0.0.1", "127.0.0.1:5000", "https://evil.example", False),  # another site's form
    (None, "127.0.0.1:5000", None, False),
])
def test_only_loopback_and_its_own_origin(remote: str | None, host: str, origin: str | None,
                                          allowed: bool) -> None:
    assert (refusal(remote, host, origin) is None) is allowed


# ---------------------------------------------------------------------- on a running stand-in


@dataclass
class Webhook:
    """A stand-in for the bot's webhook: records what the stand-in pushes to it."""

    url: str = ""
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.received.append((self.headers.get("X-Telegram-Bot-Api-Secret-Token", ""),
                                  json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/telegram/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()


@pytest.fixture
def telegram(webhook: Webhook) -> Iterator[TelegramStandin]:
    with TelegramStandin.running(extensions=(install,)) as standin:
        bot_api = f"{standin.url}/bot{TOKEN}"
        http_json("POST", f"{bot_api}/setWebhook", {"url": webhook.url, "secret_token": SECRET})
        yield standin


def _post(url: str, fields: dict[str, str], origin: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(),
                                     method="POST", headers={"Accept": "application/json"})
    if origin:
        request.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _bot_says(telegram: TelegramStandin, chat_id: int, text: str, markup: Any) -> int:
    sent = http_json("POST", f"{telegram.url}/bot{TOKEN}/sendMessage",
                     {"chat_id": chat_id, "text": text, "parse_mode": "HTML",
                      "reply_markup": markup})
    return int(sent["result"]["message_id"])


def test_sends_messages_and_presses_like_telegram(telegram: TelegramStandin,
                                                   webhook: Webhook) -> None:
    chat = f"{telegram.url}/chat/42"
    assert _post(f"{chat}/send", {"text": "/start"}, origin=telegram.url)[0] == 200
    secret, update = webhook.received[0]
    assert secret == SECRET
    assert update["message"]["text"] == "/start"
    assert update["message"]["chat"] == {"id": 42, "type": "private"}
    assert update["message"]["entities"][0]["type"] == "bot_command"

    message_id = _bot_says(telegram, 42, "<b>Rule</b> fired",
                           {"inline_keyboard": [[{"text": "Mute", "callback_data": "mute:3"}]]})
    assert _post(f"{chat}/callback", {"message_id": str(message_id), "data": "forged"},
                 origin=telegram.url)[0] == 400  # only what the bot offered
    assert _post(f"{chat}/callback", {"message_id": str(message_id), "data": "mute:3"},
                 origin=telegram.url)[0] == 200
    secret, update = webhook.received[-1]
    query = update["callback_query"]
    assert secret == SECRET and query["data"] == "mute:3" and query["from"]["id"] == 42
    assert query["message"]["message_id"] == message_id
    assert query["message"]["text"] == "Rule fired"
    assert len(webhook.received) == 2

    # another site's form, and a page reached by a name that is not loopback: refused
    assert _post(f"{chat}/send", {"text": "/stop"}, origin="https://evil.example")[0] == 403
    assert len(webhook.received) == 2


def test_without_a_webhook_the_chat_says_nobody_listens(telegram: TelegramStandin) -> None:
    http_json("POST", f"{telegram.url}/bot{TOKEN}/deleteWebhook", {})
    _post(f"{telegram.url}/chat/7/send", {"text": "hello <b>"})
    log = http_json("GET", f"{telegram.url}/chat/7/log?since=0")
    assert "hello &lt;b&gt;" in log["html"] and "has not registered a webhook" in log["html"]


def test_works_without_script(telegram: TelegramStandin, webhook: Webhook) -> None:
    """A plain form post is answered with a redirect back to the page, which shows it."""
    request = urllib.request.Request(f"{telegram.url}/chat/9/send", data=b"text=%2Fhelp",
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:  # follows the 303
        assert answer.url == f"{telegram.url}/chat/9"
        assert 'data-testid="user-message"><div class="text">/help<' in answer.read().decode()
    assert webhook.received[-1][1]["message"]["text"] == "/help"


@pytest.mark.browser
def test_a_callback_button_in_chromium(telegram: TelegramStandin, webhook: Webhook) -> None:
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    message_id = _bot_says(telegram, 42, "Alert <i>EURUSD</i> <script>x()</script>",
                           {"inline_keyboard": [[{"text": "Mute <it>",
                                                  "callback_data": "mute:1"}]]})
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{telegram.url}/chat/42")
            bubble = page.locator('[data-testid="bot-message"]')
            assert bubble.locator("i").inner_text() == "EURUSD"
            assert page.locator("script").count() == 1  # the page's own, not the bot's
            page.click('[data-testid="callback-button"]:has-text("Mute <it>")')
            wait_until(lambda: any("callback_query" in u for _, u in webhook.received), 15,
                       what="the callback_query")
            [query] = [u["callback_query"] for _, u in webhook.received if "callback_query" in u]
            assert query["message"]["message_id"] == message_id
            http_json("POST", f"{telegram.url}/bot{TOKEN}/answerCallbackQuery",
                      {"callback_query_id": query["id"], "text": "Muted for 1 h"})
            page.locator('[data-testid="notice-message"]', has_text="Muted for 1 h").wait_for()
            assert page.url == f"{telegram.url}/chat/42"  # posted in place, no navigation
            assert errors == []
        finally:
            browser.close()
