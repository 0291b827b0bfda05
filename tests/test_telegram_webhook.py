"""The webhook route and the bot's answers, through Quart's test app (real lifespan, real SQLite)
against the Telegram stand-in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from quart import Quart

from quartsig.access import accounts, chats, invites
from quartsig.alerts import storage
from quartsig.alerts.evaluation import Evaluator
from quartsig.app import DatabaseComponent, create_app, state_of
from quartsig.config import Settings
from quartsig.demo.telegram import TOKEN, TelegramStandin
from quartsig.domain.model import Key
from quartsig.telegram.client import webhook_path, webhook_secret
from quartsig.telegram.service import BotService

KEY = Fernet.generate_key().decode()
BASE = "http://board.test"
HOOK = f"/telegram/{webhook_path(TOKEN)}"
SECRET = {"X-Telegram-Bot-Api-Secret-Token": webhook_secret(TOKEN)}


@pytest.fixture
def telegram() -> Iterator[TelegramStandin]:
    with TelegramStandin.running() as standin:
        yield standin


@pytest.fixture
def make_app(tmp_path: Path, telegram: TelegramStandin) -> Callable[..., Quart]:
    def make(**changes: Any) -> Quart:
        values: dict[str, Any] = {"data_dir": tmp_path / "data", "secret_keys": (KEY,),
                                  "bot_token": TOKEN, "bot_api_url": telegram.url,
                                  "base_url": BASE, "signup": "open"}
        values.update(changes)
        return create_app(Settings.from_env({}, **values),
                          components=[DatabaseComponent(), BotService()])

    return make


@pytest.fixture
async def app(make_app: Callable[..., Quart]) -> AsyncIterator[Quart]:
    app = make_app()
    async with app.test_app():
        yield app


async def _hook(app: Quart, update: Any, headers: dict[str, str] | None = None,
                path: str = HOOK) -> int:
    client = app.test_client()
    headers = SECRET if headers is None else headers
    if isinstance(update, bytes):
        response = await client.post(path, data=update, headers=headers)
    else:
        response = await client.post(path, json=update, headers=headers)
    return response.status_code


def _token_of(message: dict[str, Any]) -> bytes:
    [[button]] = message["reply_markup"]["inline_keyboard"]
    url = button["url"]
    assert url.startswith(f"{BASE}/#token=")
    return Fernet(KEY.encode()).decrypt(url.partition("#token=")[2])


async def test_start_signs_up_and_answers_with_a_board_button(
    app: Quart, telegram: TelegramStandin
) -> None:
    assert await _hook(app, telegram.message(501, "/start")) == 200
    [message] = await telegram.await_sent(501)
    assert _token_of(message) == b"501"
    assert message["parse_mode"] == "HTML"
    assert "Hello, Test!" in message["text"]
    assert (await accounts.require_active(501)).active


async def test_forged_calls_get_401_and_change_nothing(
    app: Quart, telegram: TelegramStandin
) -> None:
    update = telegram.message(502, "/start")
    assert await _hook(app, update, headers={}) == 401
    assert await _hook(app, update, headers={**SECRET, SECRET_NAME: "x" * 64}) == 401
    assert await _hook(app, update, path="/telegram/" + "0" * 32) == 404
    assert await accounts.Account.get_or_none(tg_id=502) is None
    # the genuine delivery of the same update still counts: forged ones did not claim it
    assert await _hook(app, update) == 200
    await telegram.await_sent(502)
    assert telegram.calls_to("sendMessage")[0].params["chat_id"] == "502"


SECRET_NAME = "X-Telegram-Bot-Api-Secret-Token"


async def test_an_update_delivered_twice_is_answered_once(
    app: Quart, telegram: TelegramStandin
) -> None:
    update = telegram.message(503, "/start")
    assert await _hook(app, update) == 200
    assert await _hook(app, update) == 200
    await telegram.await_sent(503)
    assert await _hook(app, telegram.message(503, "/board")) == 200  # a later one still counts
    await telegram.await_sent(503, 2)
    assert len(telegram.sent(503)) == 2


async def test_a_malformed_update_is_answered_200_and_logged_once(
    app: Quart, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "quartsig.telegram.webhook"):
        assert await _hook(app, b"{not json") == 200
        assert await _hook(app, {"update_id": "not a number"}) == 200
    assert len([r for r in caplog.records if "malformed update" in r.getMessage()]) == 1


async def test_closed_signup_tells_a_stranger_their_id(
    make_app: Callable[..., Quart], telegram: TelegramStandin
) -> None:
    app = make_app(signup="closed")
    async with app.test_app():
        assert await _hook(app, telegram.message(504, "/start")) == 200
        [message] = await telegram.await_sent(504)
        assert "<code>504</code>" in message["text"]
        assert "reply_markup" not in message
        assert await accounts.Account.get_or_none(tg_id=504) is None


async def test_an_invite_code_lets_one_user_in_once(
    make_app: Callable[..., Quart], telegram: TelegramStandin
) -> None:
    app = make_app(signup="invite")
    async with app.test_app():
        code = await invites.mint()
        assert await _hook(app, telegram.message(505, f"/start {code}")) == 200
        [welcome] = await telegram.await_sent(505)
        assert _token_of(welcome) == b"505"
        assert await _hook(app, telegram.message(506, f"/start {code}")) == 200
        [refused] = await telegram.await_sent(506)
        assert "invite-only" in refused["text"] and "reply_markup" not in refused
        assert await accounts.Account.get_or_none(tg_id=506) is None


async def test_a_disabled_account_gets_one_polite_line_and_no_link(
    app: Quart, telegram: TelegramStandin
) -> None:
    await accounts.add(507)
    await accounts.disable(507)
    for text in ("/start", "/board"):
        assert await _hook(app, telegram.message(507, text)) == 200
    sent = await telegram.await_sent(507, 2)
    assert all("turned off" in m["text"] and "reply_markup" not in m for m in sent)


async def test_names_are_html_escaped(app: Quart, telegram: TelegramStandin) -> None:
    update = telegram.message(508, "/start")
    update["message"]["from"]["first_name"] = "<b>&Bob"
    assert await _hook(app, update) == 200
    [message] = await telegram.await_sent(508)
    assert "Hello, &lt;b&gt;&amp;Bob!" in message["text"]


async def test_a_blocked_user_is_unreachable_until_they_write_again(
    app: Quart, telegram: TelegramStandin
) -> None:
    await accounts.add(509)
    telegram.script(509, ["403"])
    assert await _hook(app, telegram.message(509, "/board")) == 200
    await _until(lambda: chats.is_unreachable(509))
    assert await _reachability(app, 509) is True  # what the board shows
    assert await _reachability(app, 510) is False
    assert await _hook(app, telegram.message(509, "/board")) == 200
    await telegram.await_sent(509)
    assert not await chats.is_unreachable(509)
    assert await _reachability(app, 509) is False


async def _reachability(app: Quart, tg_id: int) -> Any:
    token = state_of(app).tokens.issue(tg_id).token
    response = await app.test_client().get("/bot.json",
                                           headers={"Authorization": f"Bearer {token}"})
    return (await response.get_json()).get("unreachable")


async def test_stop_turns_alerts_off_and_start_back_on(
    app: Quart, telegram: TelegramStandin
) -> None:
    await accounts.add(510)
    assert await _hook(app, telegram.message(510, "/stop")) == 200
    [stopped] = await telegram.await_sent(510)
    assert "Alerts are off" in stopped["text"] and "/start" in stopped["text"]
    assert not await chats.alerts_enabled(510)
    assert await _hook(app, telegram.message(510, "/start")) == 200
    await telegram.await_sent(510, 2)
    assert await chats.alerts_enabled(510)


async def test_bot_json_names_the_bot_and_commands_are_registered(
    app: Quart, telegram: TelegramStandin
) -> None:
    body = await (await app.test_client().get("/bot.json")).get_json()
    assert body == {"username": "quartsig_test_bot", "link": "https://t.me/quartsig_test_bot"}
    await _until(lambda: _true(bool(telegram.calls_to("setMyCommands"))))
    [call] = telegram.calls_to("setMyCommands")
    assert [c["command"] for c in call.params["commands"]] == [
        "start", "board", "alerts", "stop", "help"]


async def test_without_a_token_there_is_no_bot(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({}, data_dir=tmp_path, secret_keys=(KEY,)),
                     components=[DatabaseComponent()])
    async with app.test_app():
        assert await _hook(app, {"update_id": 1}) == 404
        body = await (await app.test_client().get("/bot.json")).get_json()
        assert body == {"username": None, "link": None}


async def _true(value: bool) -> bool:
    return value


async def _until(check: Callable[[], Any]) -> None:
    """Wait (bounded, generous: 30 s) until the async ``check()`` is true."""
    import asyncio

    async with asyncio.timeout(30.0):
        while not await check():  # noqa: ASYNC110 (the worker has no event to wait on)
            await asyncio.sleep(0.02)


def test_the_bot_token_and_the_webhook_path_are_redacted_from_logs() -> None:
    from quartsig.ops.logs import redact

    line = f"POST {HOOK} 200 bot 123456789:AAEhBOweik9ai2o0aVzxAqxZbbbbbbbbbbb"
    assert webhook_path(TOKEN) not in redact(line)
    assert "AAEhBOweik9ai2o0aVzxAqxZ" not in redact(line)
    assert redact(line) == "POST /telegram/[redacted] 200 bot [redacted]"


async def _calls(telegram: TelegramStandin, method: str, count: int) -> list[Any]:
    await _until(lambda: _true(len(telegram.calls_to(method)) >= count))
    return [call.params for call in telegram.calls_to(method)]


async def test_the_telegram_channel_follows_start_stop_and_blocking(
    app: Quart, telegram: TelegramStandin
) -> None:
    assert await _hook(app, telegram.message(511, "/start")) == 200
    await telegram.await_sent(511)
    [channel] = await storage.channels_of(511)
    assert (channel["kind"], channel["target"], channel["state"]) == ("telegram", "511", "active")
    assert await _hook(app, telegram.message(511, "/stop")) == 200
    await telegram.await_sent(511, 2)
    [channel] = await storage.channels_of(511)
    assert channel["state"] == "stopped" and "/start" in channel["reason"]
    rule = await storage.create_rule(511, {"keys": [["summary", "FX_IDC:EURUSD", "1h"]],
                                           "condition": {"kind": "label"}}, limit=10)
    evaluator = Evaluator()
    evaluator.add(rule)
    fired = [t for i, label in enumerate(("NEUTRAL", "BUY"))
             for t in evaluator.evaluate([(Key("summary", "FX_IDC:EURUSD", "1h"),
                                           {"rec.all": label}, 1_000 + i)])]
    assert (await storage.write_triggers(fired, term=1)).deliveries == 0  # stopped: none
    assert await _hook(app, telegram.message(511, "/start")) == 200
    await telegram.await_sent(511, 3)
    assert [c["state"] for c in await storage.channels_of(511)] == ["active"]  # the same row
    telegram.script(511, ["403"])  # the user blocks the bot: the next reply gets 403
    assert await _hook(app, telegram.message(511, "/board")) == 200
    await _until(lambda: chats.is_unreachable(511))
    [channel] = await storage.channels_of(511)
    assert (channel["state"], channel["reason"]) == ("blocked", "the bot was blocked in Telegram")
    assert await _hook(app, telegram.message(511, "/board")) == 200  # and writes again
    await telegram.await_sent(511, 4)
    assert [c["state"] for c in await storage.channels_of(511)] == ["active"]


async def test_alerts_lists_rules_and_its_buttons_mute_unmute_and_delete(
    app: Quart, telegram: TelegramStandin
) -> None:
    await accounts.add(512)
    await accounts.add(513)
    spec = {"keys": [["summary", "FX_IDC:EURUSD", "1h"]],
            "condition": {"kind": "label", "to": ["STRONG_BUY"]}}
    first = await storage.create_rule(512, spec, limit=10)
    second = await storage.create_rule(512, {**spec, "name": "<i>mine</i>"}, limit=10)
    theirs = await storage.create_rule(513, spec, limit=10)
    assert await _hook(app, telegram.message(512, "/alerts")) == 200
    [listed] = await telegram.await_sent(512)
    assert "EURUSD 1h: rec.all changes to STRONG_BUY" in listed["text"]
    assert "&lt;i&gt;mine&lt;/i&gt;" in listed["text"]
    rows = listed["reply_markup"]["inline_keyboard"]
    assert [[b.get("callback_data") for b in row] for row in rows[:2]] == [
        [f"rule:{first.id}:mute", f"rule:{first.id}:delete"],
        [f"rule:{second.id}:mute", f"rule:{second.id}:delete"]]
    assert rows[2][0]["text"] == "Open board"

    async def press(data: str, count: int, user: int = 512) -> tuple[str, list[Any]]:
        assert await _hook(app, telegram.callback(user, data, message=listed)) == 200
        answers = await _calls(telegram, "answerCallbackQuery", count)
        return answers[-1]["text"], [c.params for c in telegram.calls_to("editMessageText")]

    notice, edits = await press(f"rule:{first.id}:mute", 1)
    assert notice.startswith("Muted: EURUSD 1h")
    assert (await storage.rules_of(512))[0].muted
    await _calls(telegram, "editMessageText", 1)
    edits = [c.params for c in telegram.calls_to("editMessageText")]
    assert "(muted)" in edits[-1]["text"]
    assert edits[-1]["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == (
        f"rule:{first.id}:unmute")
    notice, _ = await press(f"rule:{first.id}:unmute", 2)
    assert notice.startswith("Unmuted") and not (await storage.rules_of(512))[0].muted
    notice, _ = await press(f"rule:{second.id}:delete", 3)
    assert notice == "Deleted." and [r.id for r in await storage.rules_of(512)] == [first.id]
    await _calls(telegram, "editMessageText", 3)
    assert "mine" not in telegram.calls_to("editMessageText")[-1].params["text"]
    notice, _ = await press(f"rule:{theirs.id}:delete", 4)  # someone else's rule
    assert notice == "That rule is not yours or no longer exists."
    assert [r.id for r in await storage.rules_of(513)] == [theirs.id]
    notice, _ = await press(f"mute:{theirs.id}", 5)
    assert notice == "That rule is not yours or no longer exists."
    assert not (await storage.rules_of(513))[0].muted
    notice, _ = await press("rule:1:explode", 6)
    assert "no longer works" in notice
    edits_before = len(telegram.calls_to("editMessageText"))
    notice, _ = await press(f"mute:{first.id}", 7)  # an alert's "Mute this rule"
    assert notice.startswith("Muted") and (await storage.rules_of(512))[0].muted
    assert len(telegram.calls_to("editMessageText")) == edits_before  # the alert stays


async def test_the_bots_tasks_run_under_the_supervisor(app: Quart) -> None:
    records = state_of(app).supervisor.records
    assert {"bot", "bot-introduce", "bot-channels"} <= set(records)
    assert records["bot"].running  # the worker: restarted by the supervisor if it raises
