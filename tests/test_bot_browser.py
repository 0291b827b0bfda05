"""The whole path a new user walks, in a real Chromium against a real ``quartsig serve`` whose
bot talks to the Telegram stand-in: ``/start`` -> the button -> live cards; an expired link shows
"Get a new link from @<bot>"; ``/board`` mints a link that works again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from quartsig.demo.telegram import TOKEN, TelegramStandin
from tests.support.net import free_port
from tests.support.processes import QuartsigServer, Standin, quartsig_cli, quartsig_env
from tests.test_browser import (  # the board's own browser helpers and fixtures
    CHROMIUM_ARGS,  # noqa: F401 (the browser fixture's)
    add_card,
    browser,  # noqa: F401 (fixture)
    open_page,  # noqa: F401 (fixture)
    standin,  # noqa: F401 (fixture)
    wait_state,
    wait_value,
)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

USER = 777


@pytest.fixture
def telegram() -> Iterator[TelegramStandin]:
    with TelegramStandin.running() as running:
        yield running


def _button_url(message: dict[str, Any]) -> str:
    [[button]] = message["reply_markup"]["inline_keyboard"]
    assert button["text"] == "Open board"
    return str(button["url"])


def test_start_button_opens_live_cards_and_an_expired_link_points_to_the_bot(
    tmp_path: Path, standin: Standin, telegram: TelegramStandin, open_page: Any  # noqa: F811
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = quartsig_env(tmp_path / "data", standin.url, QUARTSIG_BOT_TOKEN=TOKEN,
                       QUARTSIG_BOT_API_URL=telegram.url, QUARTSIG_SIGNUP="open",
                       QUARTSIG_BASE_URL=base)
    standin.set_values("FX_IDC:GBPUSD", "1h", {"Recommend.All": 0.41})
    with QuartsigServer.start(env, tmp_path, port=port):
        quartsig_cli(env, "bot", "webhook", "set")
        assert telegram.webhook_url.startswith(f"{base}/telegram/")

        # a new Telegram user sends /start and gets the button
        assert telegram.push(telegram.message(USER, "/start")) == 200
        [welcome] = telegram.wait_sent(USER, 1)
        page = open_page().page
        page.goto(_button_url(welcome))
        wait_state(page, "open")
        add_card(page, "GBPUSD", "1h", "full")
        wait_value(page, "full|FX_IDC:GBPUSD|1h", "card-recommend-all", "0.41")

        # an expired link: the board names the bot and links to it
        key = env["QUARTSIG_SECRET_KEYS"].encode()
        expired = Fernet(key).encrypt_at_time(str(USER).encode(), int(time.time()) - 10 * 86400)
        stale = open_page().page
        stale.goto(f"{base}/#token={expired.decode()}")
        stale.wait_for_selector('[data-testid="fatal"]:not([hidden])')
        link = stale.locator('[data-testid="bot-link"]')
        link.wait_for(state="visible")
        assert link.inner_text() == "Get a new link from @quartsig_test_bot"
        assert link.get_attribute("href") == "https://t.me/quartsig_test_bot"

        # /board mints a new link that works, in the tab that had the expired one
        assert telegram.push(telegram.message(USER, "/board")) == 200
        fresh = _button_url(telegram.wait_sent(USER, 2)[1])
        stale.goto(fresh)
        stale.reload()  # only the fragment changed: the page reads it on load
        wait_state(stale, "open")
        assert stale.locator('[data-testid="fatal"]').is_hidden()
        add_card(stale, "GBPUSD", "1h", "full")
        wait_value(stale, "full|FX_IDC:GBPUSD|1h", "card-recommend-all", "0.41")
