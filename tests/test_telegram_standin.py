"""The Telegram stand-in answers as Telegram does, so tests built on it mean something."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)

from quartsig.demo.telegram import TOKEN, TelegramStandin


@pytest.fixture
def telegram() -> Iterator[TelegramStandin]:
    with TelegramStandin.running() as standin:
        yield standin


def _bot(telegram: TelegramStandin, token: str = TOKEN) -> Bot:
    return Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.url)))


async def test_scripted_failures_reach_aiogram_as_its_typed_errors(
    telegram: TelegramStandin,
) -> None:
    telegram.script(7, ["429:4", "403", "400", "500", "ok"])
    bot = _bot(telegram)
    try:
        with pytest.raises(TelegramRetryAfter) as retry:
            await bot.send_message(7, "a")
        assert retry.value.retry_after == 4
        with pytest.raises(TelegramForbiddenError, match="blocked"):
            await bot.send_message(7, "b")
        with pytest.raises(TelegramBadRequest, match="chat not found"):
            await bot.send_message(7, "c")
        with pytest.raises(TelegramServerError):
            await bot.send_message(7, "d")
        await bot.send_message(7, "e")
        await bot.send_message(8, "other chat, unscripted")
    finally:
        await bot.session.close()
    assert [m["text"] for m in telegram.sent(7)] == ["e"]
    assert [c.status for c in telegram.calls_to("sendMessage")] == [429, 403, 400, 500, 200, 200]


async def test_a_wrong_token_is_refused(telegram: TelegramStandin) -> None:
    bot = _bot(telegram, "1:wrong")
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await bot.get_me()
    finally:
        await bot.session.close()


async def test_get_updates_conflicts_with_a_webhook_and_with_a_second_poller(
    telegram: TelegramStandin,
) -> None:
    bot = _bot(telegram)
    try:
        first = asyncio.create_task(bot.get_updates(timeout=2))
        await asyncio.to_thread(lambda: _wait(lambda: bool(telegram._poller.waiting)))
        with pytest.raises(TelegramConflictError):
            await bot.get_updates(timeout=0)
        telegram.enqueue(telegram.message(5, "/help"))
        assert [u.message.text for u in await first if u.message] == ["/help"]
        await bot.set_webhook("http://127.0.0.1:9/hook", secret_token="s" * 32)
        with pytest.raises(TelegramConflictError):
            await bot.get_updates(timeout=0)
        assert (await bot.get_webhook_info()).url == "http://127.0.0.1:9/hook"
    finally:
        await bot.session.close()


def _wait(ready: object, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.01)


async def test_the_limit_mode_answers_429_as_telegram_does() -> None:
    """Over one message a second to a chat, or thirty a second in all: 429 with the seconds
    until the window frees. The limits' clock is moved, not waited for."""
    now = [100.0]
    with TelegramStandin.running(limits=True, clock=lambda: now[0]) as telegram:
        bot = _bot(telegram)
        try:
            await bot.send_message(1, "a")
            with pytest.raises(TelegramRetryAfter) as retry:
                await bot.send_message(1, "b")
            assert retry.value.retry_after == 1
            for chat in range(2, 31):  # 30 accepted within the second, in all
                await bot.send_message(chat, "c")
            with pytest.raises(TelegramRetryAfter):
                await bot.send_message(31, "d")
            now[0] += 1.0
            await bot.send_message(1, "e")
            await bot.send_message(31, "f")
            telegram.enforce_limits(False)
            for _ in range(3):
                await bot.send_message(1, "g")
        finally:
            await bot.session.close()
    assert [c.params["text"] for c in telegram.too_many()] == ["b", "d"]
    assert len(telegram.sent(1)) == 5
