"""One aiogram ``Bot`` per app, built from the settings, and what it learns about itself.

``QUARTSIG_BOT_API_URL`` points aiogram at another Bot API server (a local one, or the tests'
stand-in) through ``TelegramAPIServer.from_base``. The bot's username comes from ``getMe`` once
and is kept: the board's "Get a new link from @<bot>" and every ``t.me`` link need it, and it
never changes while the token stays the same.

The webhook's path and secret are derived from the token (HMAC), so every node of a cluster
agrees on them without another setting, nobody can guess them without the token, and a new
token (BotFather's revoke) changes both.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from aiogram import Bot

# aiogram is imported where a bot is made or used, never at import: its types take seconds to
# build, which every process without a bot (and every test that starts one) would pay.

#: Seconds one Bot API call may take: a hung Telegram must not hold a worker for long.
REQUEST_TIMEOUT = 15.0

T = TypeVar("T")


class BotError(RuntimeError):
    """The bot cannot do what the command line asked (Telegram refused or is unreachable,
    another poller runs, a webhook is set); the message says which, in one line."""


async def plainly(work: Awaitable[T]) -> T:
    """Await ``work``; any Telegram or network failure becomes a one-line :class:`BotError`."""
    from aiogram.exceptions import AiogramError

    try:
        return await work
    except (AiogramError, OSError, TimeoutError) as error:
        raise BotError(f"Telegram: {error}") from None


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), f"quartsig-{purpose}".encode(), hashlib.sha256).hexdigest()


def webhook_path(token: str) -> str:
    """The unguessable part of the webhook's URL (``/telegram/<this>``)."""
    return _derive(token, "webhook-path")[:32]


def webhook_secret(token: str) -> str:
    """``setWebhook``'s ``secret_token``: what ``X-Telegram-Bot-Api-Secret-Token`` must be."""
    return _derive(token, "webhook-secret")


def webhook_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/telegram/{webhook_path(token)}"


def make_bot(token: str, api_url: str | None = None, *,
             timeout: float = REQUEST_TIMEOUT) -> Bot:
    """A ``Bot`` talking HTML parse mode, to Telegram or to ``api_url``."""
    from aiogram import Bot
    from aiogram.client.default import DefaultBotProperties
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from aiogram.enums import ParseMode

    api = TelegramAPIServer.from_base(api_url) if api_url else None
    session = AiohttpSession(api=api, timeout=timeout) if api else AiohttpSession(
        timeout=timeout)
    return Bot(token, session=session,
               default=DefaultBotProperties(parse_mode=ParseMode.HTML,
                                            link_preview_is_disabled=True))


class BotIdentity:
    """The bot's username, from ``getMe`` on first use and then cached."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self._username: str | None = None

    @property
    def known(self) -> str | None:
        """The username if already fetched (never waits on Telegram)."""
        return self._username

    async def username(self) -> str:
        if self._username is None:
            me = await self.bot.get_me()
            self._username = me.username or str(me.id)
        return self._username
