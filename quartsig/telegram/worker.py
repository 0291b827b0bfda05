"""The bot's worker: takes accepted updates off a queue, answers them, sends the answers.

The webhook only checks, dedupes and queues (:meth:`Worker.offer`), so Telegram being slow,
down or answering 429 never holds a web request or the collector: the waiting happens here, in
a few concurrent drains. :func:`verdict` is the whole sending policy, pure: 429 waits
``retry_after`` and tries again, 403 marks the chat unreachable (until the user writes again),
400 gives up, 5xx and timeouts back off a little, and nothing is tried forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
)

from quartsig.access import chats
from quartsig.ops.logs import Sparse
from quartsig.telegram import subscriptions
from quartsig.telegram.commands import Desk, Reply, answer, press

log = logging.getLogger(__name__)

#: Updates waiting for a worker; beyond it the webhook answers 503 and Telegram retries later.
QUEUE_SIZE = 1000
#: Updates answered at once (a chat waiting out its 429 does not stall the others).
CONCURRENCY = 4
#: Tries per message before it is dropped.
ATTEMPTS = 4
#: Longest wait between tries, whatever ``retry_after`` says (a longer one: give up).
MAX_WAIT = 60.0

Verdict = float | Literal["unreachable", "give_up"]


def verdict(error: BaseException, attempt: int) -> Verdict:
    """What to do after ``error`` on try number ``attempt`` (1-based): seconds to wait before
    the next try, ``"unreachable"`` (403) or ``"give_up"``."""
    if isinstance(error, TelegramForbiddenError):
        return "unreachable"
    if attempt >= ATTEMPTS or isinstance(error, TelegramBadRequest):
        return "give_up"
    if isinstance(error, TelegramRetryAfter):
        return float(error.retry_after) if error.retry_after <= MAX_WAIT else "give_up"
    if isinstance(error, TelegramServerError | TelegramNetworkError | TimeoutError):
        return min(MAX_WAIT, 0.5 * 2 ** (attempt - 1))
    return "give_up"


def markup(reply: Reply) -> InlineKeyboardMarkup | None:
    if not reply.keyboard:
        return None
    return InlineKeyboardMarkup(inline_keyboard=[
        [InlineKeyboardButton(text=button.text, url=button.url, callback_data=button.callback)
         for button in row]
        for row in reply.keyboard])


class Worker:
    """Answers updates from :meth:`offer` with :func:`~quartsig.telegram.commands.answer`."""

    def __init__(self, bot: Bot, desk: Callable[[], Desk], *, queue_size: int = QUEUE_SIZE,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.bot = bot
        self.desk = desk
        self.sleep = sleep
        self.queue: asyncio.Queue[Update] = asyncio.Queue(queue_size)
        self.failures = Sparse()

    def offer(self, update: Update) -> bool:
        """Queue ``update``; False when the queue is full (the webhook then answers 503)."""
        try:
            self.queue.put_nowait(update)
        except asyncio.QueueFull:
            return False
        return True

    async def run(self, concurrency: int = CONCURRENCY) -> None:
        await asyncio.gather(*(self._drain() for _ in range(concurrency)))

    async def _drain(self) -> None:
        while True:
            update = await self.queue.get()
            try:
                await self.handle(update)
            except Exception:
                if (held := self.failures.due()) is not None:
                    log.warning("bot: update %s failed (%d more since the last report)",
                                update.update_id, held, exc_info=True)
            finally:
                self.queue.task_done()

    async def handle(self, update: Update) -> None:
        if update.callback_query is not None:  # every callback query needs an answer
            await self.pressed(update.callback_query)
            return
        message = update.message
        if message is None or message.text is None or message.from_user is None:
            return  # edits, photos, joins: nothing to answer
        if message.chat.type != "private":
            return  # a board link must never land in a group
        tg_id = message.from_user.id
        await self.heard_from(tg_id)
        reply = await answer(self.desk(), tg_id, message.text,
                             name=message.from_user.first_name)
        await self.send(message.chat.id, reply)

    async def heard_from(self, tg_id: int) -> None:
        """The user wrote or pressed a button: they can be reached again."""
        await chats.heard_from(tg_id)
        await subscriptions.heard_from(tg_id)

    async def pressed(self, query: CallbackQuery) -> None:
        """A button: act (:func:`~quartsig.telegram.commands.press`), answer the query with
        the notice and, for the ``/alerts`` list, edit that message to the list as it is
        now."""
        tg_id = query.from_user.id
        await self.heard_from(tg_id)
        result = await press(self.desk(), tg_id, query.data or "")
        await self.bot.answer_callback_query(query.id, text=result.notice)
        message = query.message
        if result.reply is None or not isinstance(message, Message):
            return  # an alert's "Mute this rule", or a message too old to edit
        try:
            await self.bot.edit_message_text(result.reply.text, chat_id=message.chat.id,
                                             message_id=message.message_id,
                                             reply_markup=markup(result.reply))
        except TelegramBadRequest as error:  # "message is not modified": nothing to do
            log.debug("bot: list not edited: %s", error)

    async def send(self, chat_id: int, reply: Reply) -> bool:
        """Send ``reply`` under :func:`verdict`'s policy; whether it reached the chat."""
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.bot.send_message(chat_id, reply.text, reply_markup=markup(reply))
                return True
            except Exception as error:
                decision = verdict(error, attempt)
                if decision == "unreachable":
                    await chats.unreachable(chat_id)
                    await subscriptions.blocked(chat_id)
                    log.info("bot: chat %s blocked the bot; marked unreachable", chat_id)
                    return False
                if decision == "give_up":
                    log.warning("bot: message to chat %s dropped after %d tries: %s",
                                chat_id, attempt, error)
                    return False
                await self.sleep(decision)
