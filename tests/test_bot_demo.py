"""``quartsig serve --demo --bot`` as a newcomer tries it, in a real Chromium: the printed chat
link, ``/start``, "Open board", live cards. The bot, the server and the board are the real
ones; only Telegram is the stand-in, in the server's own process, behind its chat page."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.support.net import wait_until
from tests.support.processes import QuartsigServer, quartsig_env
from tests.test_browser import (  # the board's own browser helpers and fixtures
    CHROMIUM_ARGS,  # noqa: F401 (the browser fixture's)
    add_card,
    browser,  # noqa: F401 (fixture)
    card_selector,
    open_page,  # noqa: F401 (fixture)
    wait_state,
)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHAT_LINE = re.compile(r"^demo Telegram chat \(user (\d+)\): (http://127\.0\.0\.1:\d+/chat/\d+)$",
                       re.MULTILINE)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[QuartsigServer, str]]:
    """``quartsig serve --demo --bot`` with nothing set up but a data dir (and a fast tick)."""
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9")
    with QuartsigServer.start(env, tmp_path, "--demo", "--bot") as server:
        found = wait_until(lambda: CHAT_LINE.search(server.tail(200)), 30,
                           what="the demo chat link")
        assert found.group(1) == "42"
        yield server, found.group(2)


def _expired_link(server: QuartsigServer, tg_id: int) -> str:
    key = server.env["QUARTSIG_SECRET_KEYS"].encode()
    token = Fernet(key).encrypt_at_time(str(tg_id).encode(), int(time.time()) - 10 * 86400)
    return f"{server.url}/#token={token.decode()}"


def test_the_printed_chat_link_start_open_board_live_cards(
    demo: tuple[QuartsigServer, str], open_page: Any  # noqa: F811
) -> None:
    server, chat_link = demo
    watched = open_page()
    chat = watched.page
    chat.goto(chat_link)
    assert chat.locator("h1").inner_text() == "@quartsig_demo_bot"
    # the bot's menu comes from its setMyCommands, as in Telegram
    chat.locator('[data-testid="command"]', has_text="/help").wait_for()

    chat.fill('[data-testid="text"]', "/start")
    chat.click('[data-testid="send"]')
    chat.locator('[data-testid="user-message"]', has_text="/start").wait_for()
    reply = chat.locator('[data-testid="bot-message"]').last
    reply.wait_for()
    assert "Hello, Demo!" in reply.inner_text()
    assert reply.locator("b").inner_text() == "24 h"  # the bot's HTML, rendered
    assert chat.input_value('[data-testid="text"]') == ""

    button = reply.locator('[data-testid="url-button"]')
    assert button.inner_text() == "Open board"
    assert button.get_attribute("href").startswith(f"{server.url}/#token=")
    with chat.context.expect_page() as opened:
        button.click()
    board = opened.value
    wait_state(board, "open")
    add_card(board, "EURUSD", "1h", "full")
    key = "full|FX_IDC:EURUSD|1h"
    updated = f'{card_selector(key)} [data-testid="card-updated"]'
    board.wait_for_function("s => document.querySelector(s)?.dataset.ts", arg=updated,
                            timeout=20_000)
    first = board.get_attribute(updated, "data-ts")
    board.wait_for_function(  # live: the simulated market moves and the card follows
        "([s, t]) => document.querySelector(s)?.dataset.ts !== t", arg=[updated, first],
        timeout=20_000)

    # an expired link: the board's "Get a new link from @<bot>" leads back to this chat,
    # where /board (from the bot's menu) gives a fresh link that works
    board.goto(_expired_link(server, 42))
    board.reload()  # only the fragment changed: the page reads it on load
    back = board.locator('[data-testid="bot-link"]')
    back.wait_for(state="visible")
    assert back.inner_text() == "Get a new link from @quartsig_demo_bot"
    assert back.get_attribute("href") == chat_link
    with board.context.expect_page() as reopened:
        back.click()
    chat = reopened.value
    chat.locator('[data-testid="command"]', has_text="/board").click()
    chat.locator('[data-testid="url-button"]').nth(1).wait_for()
    hrefs = [a.get_attribute("href") for a in chat.locator('[data-testid="url-button"]').all()]
    assert len(set(hrefs)) == 2
    board.goto(hrefs[1])
    board.reload()
    wait_state(board, "open")
    assert board.locator('[data-testid="fatal"]').is_hidden()
    watched.assert_clean()
