"""Alerts through the bot, end to end in a real app (real lifespan, SQLite, recorder, delivery
worker, the bot's webhook and worker) against the Telegram stand-in: a user signs up with
/start, makes a rule over the HTTP API, a publication moves the rule's key, the stand-in
receives the alert with its "Open board" and "Mute this rule" buttons, and pressing "Mute this
rule" mutes the rule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from quart import Quart

from quartsig.access import accounts
from quartsig.alerts import storage
from quartsig.app import create_app, state_of
from quartsig.config import Settings
from quartsig.demo.telegram import TOKEN, TelegramStandin
from quartsig.domain.model import Batch, Key
from quartsig.telegram.channel import MUTE, TelegramChannel
from quartsig.telegram.client import webhook_path, webhook_secret

KEY = Fernet.generate_key().decode()
BASE = "http://board.test"
USER = 6006
EURUSD = Key("summary", "FX_IDC:EURUSD", "1h")
WAIT = 30.0


@pytest.fixture
def telegram() -> Iterator[TelegramStandin]:
    with TelegramStandin.running() as standin:
        yield standin


@pytest.fixture
async def app(tmp_path: Path, telegram: TelegramStandin) -> AsyncIterator[Quart]:
    settings = Settings.from_env({}, data_dir=tmp_path / "data", secret_keys=(KEY,),
                                 interval=3600.0, bot_token=TOKEN, bot_api_url=telegram.url,
                                 base_url=BASE, signup="open",
                                 alerts_reload=3600.0)  # reloads come from changes here
    app = create_app(settings)  # the default components: the bot's among them
    async with app.test_app():
        yield app


async def _push(app: Quart, update: Any) -> int:
    response = await app.test_client().post(
        f"/telegram/{webhook_path(TOKEN)}", json=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": webhook_secret(TOKEN)})
    return response.status_code


def _publish(app: Quart, label: str, ts: int) -> None:
    """What the collector hands the recorder after a publication moving EURUSD 1h."""
    state = state_of(app)
    assert state.alerts is not None
    rating = {"NEUTRAL": 0.0, "BUY": 0.3}[label]
    state.alerts.on_published(
        Batch(values=[(EURUSD, {"Recommend.All": rating, "rec.all": label}, ts)]), 0)


async def test_a_rule_fires_into_the_chat_and_its_button_mutes_it(
        app: Quart, telegram: TelegramStandin) -> None:
    state = state_of(app)
    assert isinstance(state.channels.get("telegram"), TelegramChannel)
    assert state.alerts is not None
    assert await _push(app, telegram.message(USER, "/start")) == 200
    await telegram.await_sent(USER)  # signed up, the channel row made
    token = state.tokens.issue(USER).token
    state.alerts.loaded.clear()
    response = await app.test_client().post(
        "/api/alerts", headers={"Authorization": f"Bearer {token}"},
        json={"keys": [list(EURUSD)], "condition": {"kind": "label", "to": ["BUY"]}})
    assert response.status_code == 201
    rule = await response.get_json()
    async with asyncio.timeout(WAIT):
        await state.alerts.loaded.wait()
    _publish(app, "NEUTRAL", 1_000)
    _publish(app, "BUY", 2_000)
    [_, alert] = await telegram.await_sent(USER, 2)
    assert "EURUSD 1h: NEUTRAL → BUY" in alert["text"] and alert["parse_mode"] == "HTML"
    [[board, mute]] = alert["reply_markup"]["inline_keyboard"]
    assert board["text"] == "Open board" and board["url"].startswith(f"{BASE}/#token=")
    assert state.tokens.verify(board["url"].partition("#token=")[2]) == USER
    assert (mute["text"], mute["callback_data"]) == (MUTE, f"mute:{rule['id']}")

    state.alerts.loaded.clear()
    assert await _push(app, telegram.callback(USER, mute["callback_data"],
                                              message=alert)) == 200
    async with asyncio.timeout(WAIT):
        while not telegram.calls_to("answerCallbackQuery"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    [answered] = telegram.calls_to("answerCallbackQuery")
    assert answered.params["text"].startswith("Muted: EURUSD 1h")
    [muted] = await storage.rules_of(USER)
    assert muted.muted
    async with asyncio.timeout(WAIT):  # this node's recorder reloaded at once
        await state.alerts.loaded.wait()
    live = state.alerts.evaluator.rule(rule["id"])
    assert live is not None and live.muted
    history = await storage.history(USER)
    assert [d["status"] for d in history[0]["deliveries"]] in (["sent"], ["pending"])


async def test_a_telegram_channel_is_made_by_start_not_by_the_api(app: Quart) -> None:
    state = state_of(app)
    await accounts.add(USER)
    token = state.tokens.issue(USER).token
    response = await app.test_client().post(
        "/api/alerts/channels", headers={"Authorization": f"Bearer {token}"},
        json={"kind": "telegram", "url": "https://example.test/chat"})
    body = await response.get_json()
    assert (response.status_code, body["error"]) == (400, "unknown_channel_kind")
    assert "/start" in body["message"]
    assert await storage.channels_of(USER) == []
