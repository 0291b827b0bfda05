"""The worker's sending policy: 429 waits ``retry_after``, 403 marks the chat unreachable, 400
gives up, 5xx backs off, nothing is tried forever; the commands' parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import SendMessage
from cryptography.fernet import Fernet

from quartsig.access import chats, database
from quartsig.access.tokens import TokenAuthority
from quartsig.config import Settings
from quartsig.demo.telegram import TOKEN, TelegramStandin
from quartsig.telegram.client import make_bot
from quartsig.telegram.commands import (
    MAX_LISTED,
    Desk,
    Reply,
    parse,
    parse_callback,
    rules_list,
)
from quartsig.telegram.worker import ATTEMPTS, Worker, markup, verdict

METHOD = SendMessage(chat_id=1, text="x")


def test_verdict_is_the_whole_policy() -> None:
    assert verdict(TelegramRetryAfter(METHOD, "slow down", 7), 1) == 7.0
    assert verdict(TelegramRetryAfter(METHOD, "slow down", 3600), 1) == "give_up"
    assert verdict(TelegramForbiddenError(METHOD, "bot was blocked by the user"), 1) == (
        "unreachable")
    assert verdict(TelegramBadRequest(METHOD, "chat not found"), 1) == "give_up"
    assert verdict(TelegramServerError(METHOD, "bad gateway"), 1) == 0.5
    assert verdict(TelegramServerError(METHOD, "bad gateway"), 2) == 1.0
    assert verdict(TimeoutError(), ATTEMPTS) == "give_up"
    assert verdict(ValueError("a bug"), 1) == "give_up"


def test_parse_reads_commands_with_a_bot_suffix_and_a_payload() -> None:
    assert parse("/start@quartsig_bot abc-123") == ("start", "abc-123")
    assert parse("  /BOARD ") == ("board", "")
    assert parse("hello") == ("", "hello")


@pytest.fixture
def telegram() -> Iterator[TelegramStandin]:
    with TelegramStandin.running() as standin:
        yield standin


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[None]:
    async with database.open_database(Settings.from_env({}, data_dir=tmp_path)):
        yield


async def test_a_429_is_waited_out_then_sent(telegram: TelegramStandin, db: None) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the injected clock: no real waiting
        waits.append(seconds)

    bot = make_bot(TOKEN, telegram.url)
    worker = Worker(bot, lambda: None, sleep=sleep)  # type: ignore[arg-type,return-value]
    telegram.script(11, ["429:5", "502", "ok"])
    try:
        assert await worker.send(11, Reply("hi")) is True
        telegram.script(12, ["400"])
        assert await worker.send(12, Reply("hi")) is False
        telegram.script(13, ["403"])
        assert await worker.send(13, Reply("hi")) is False
        assert await chats.is_unreachable(13)
        telegram.script(14, ["500"] * ATTEMPTS)
        assert await worker.send(14, Reply("hi")) is False
    finally:
        await bot.session.close()
    assert waits == [5.0, 1.0, 0.5, 1.0, 2.0]  # 429 as told; then 0.5 s doubling per try
    assert [m["text"] for m in telegram.sent(11)] == ["hi"]
    assert telegram.sent(12) == telegram.sent(13) == telegram.sent(14) == []


def test_callback_data_is_parsed_strictly() -> None:
    assert parse_callback("mute:12") == (12, "mute", False)  # an alert's "Mute this rule"
    assert parse_callback("rule:12:unmute") == (12, "unmute", True)  # the /alerts list
    assert parse_callback("rule:12:delete") == (12, "delete", True)
    for data in ("", "mute:", "mute:x", "mute:-1", "rule:12", "rule:12:explode",
                 "rule:1:mute:extra", "delete:12", "rule:" + "9" * 30 + ":mute"):
        assert parse_callback(data) is None, data


def test_the_alerts_list_caps_its_buttons_and_escapes_names() -> None:
    from quartsig.alerts.rules import rule_from_spec

    rules = [rule_from_spec({"keys": [["summary", "FX_IDC:EURUSD", "1h"]],
                             "condition": {"kind": "cross", "output": "RSI",
                                           "direction": "below", "level": 30},
                             "name": f"<b>{i}</b>"}, id=i + 1, owner=1, muted=i == 0)
             for i in range(MAX_LISTED + 3)]
    desk = Desk(TokenAuthority([Fernet.generate_key().decode()], 60), "open", "http://b.test")
    reply = rules_list(desk, 1, rules)
    assert "&lt;b&gt;0&lt;/b&gt; (EURUSD 1h: RSI below 30) <i>(muted)</i>" in reply.text
    assert "and 3 more on the board" in reply.text
    assert len(reply.keyboard) == MAX_LISTED + 1  # a row per listed rule, then Open board
    assert reply.keyboard[0][0].callback == "rule:1:unmute"
    assert reply.keyboard[1][0].callback == "rule:2:mute"
    board = reply.keyboard[-1][0]
    assert board.url is not None and board.url.startswith("http://b.test/#token=")
    keyboard = markup(reply)
    assert keyboard is not None and keyboard.inline_keyboard[0][1].callback_data == (
        "rule:1:delete")
    assert markup(Reply("plain")) is None
