"""The bot as a component of the app: its client, worker, dedupe and start-up chores.

Present only when ``QUARTSIG_BOT_TOKEN`` is set. On start it builds the ``Bot``, the claims that
dedupe updates (Redis when ``QUARTSIG_REDIS_URL`` is set, so two nodes given the same update
answer once; memory otherwise) and the worker, then, in the background so that Telegram being
down never delays start-up, learns its username (``getMe``) and registers its commands
(``setMyCommands``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from quartsig.cluster.claims import Claims, MemoryClaims, RedisClaims
from quartsig.state import State
from quartsig.telegram.client import BotIdentity, make_bot, webhook_path, webhook_secret

if TYPE_CHECKING:  # aiogram loads only with a bot (quartsig.telegram.client says why)
    from aiogram import Bot
    from aiogram.types import Update

    from quartsig.telegram.worker import Worker
from quartsig.telegram.commands import COMMANDS, Desk

log = logging.getLogger(__name__)

EXTENSION = "quartsig.telegram"
#: Seconds an ``update_id`` is remembered: Telegram keeps an undelivered update ~24 h.
DEDUPE_TTL = 26 * 3600.0
#: Seconds between tries of ``getMe``/``setMyCommands`` while Telegram does not answer.
INTRODUCE_RETRY = 30.0

Accepted = Literal["accepted", "duplicate", "busy"]


def spawn(state: State, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Start one of the bot's long-lived tasks. The one place to switch to the task supervisor
    (``state.supervisor``) once it exists; until then, like the feed's tasks in ``app``."""
    del state  # the supervisor will hang off it
    return asyncio.create_task(work, name=name)


@dataclass(eq=False)
class BotService:
    """Component ``bot``: see the module docstring. ``fallback_url`` is where the board is when
    ``QUARTSIG_BASE_URL`` is unset (``quartsig serve`` knows where it listens)."""

    name: str = "bot"
    fallback_url: str | None = None
    #: Where people talk to the bot, when not on Telegram (``t.me/<username>``): the demo's
    #: chat page (``serve --demo --bot``), so the board's "Get a new link" leads there.
    chat_url: str | None = None
    bot: Bot | None = None
    identity: BotIdentity | None = None
    worker: Worker | None = None
    claims: Claims | None = None
    path: str = ""
    secret: str = ""
    base_url: str | None = None
    node: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:"
                                              f"{uuid.uuid4().hex[:6]}")
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, state: State) -> None:
        settings = state.settings
        token = settings.bot_token
        if token is None:
            raise RuntimeError("the bot component needs QUARTSIG_BOT_TOKEN")
        self.path, self.secret = webhook_path(token), webhook_secret(token)
        self.base_url = settings.base_url or self.fallback_url
        self.bot = make_bot(token, settings.bot_api_url)
        self.identity = BotIdentity(self.bot)
        self.claims = (RedisClaims.from_url(settings.redis_url, settings.redis_prefix)
                       if settings.redis_url else MemoryClaims())
        tokens, signup = state.tokens, settings.signup
        from quartsig.telegram.worker import Worker

        self.worker = Worker(self.bot, lambda: Desk(tokens, signup, self.base_url))
        self.tasks = [spawn(state, self.worker.run(), "quartsig-bot"),
                      spawn(state, self._introduce(), "quartsig-bot-introduce")]

    async def stop(self, state: State) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=10.0)
        self.tasks = []
        if self.claims is not None:
            await self.claims.close()
        if self.bot is not None:
            await self.bot.session.close()

    async def _introduce(self) -> None:
        from aiogram.types import BotCommand

        assert self.identity is not None and self.bot is not None
        while True:
            try:
                username = await self.identity.username()
                await self.bot.set_my_commands(
                    [BotCommand(command=name, description=text) for name, text in COMMANDS])
                log.info("bot @%s ready", username)
                return
            except Exception as error:
                log.warning("bot: Telegram did not answer getMe/setMyCommands (%s); "
                            "trying again in %gs", error, INTRODUCE_RETRY)
                await asyncio.sleep(INTRODUCE_RETRY)

    async def accept(self, update: Update) -> Accepted:
        """Queue ``update`` unless some node (or an earlier delivery) took it already."""
        assert self.claims is not None and self.worker is not None
        name = f"bot:update:{update.update_id}"
        if not await self.claims.claim(name, self.node, DEDUPE_TTL):
            return "duplicate"
        if not self.worker.offer(update):
            await self.claims.release(name, self.node)  # Telegram will deliver it again
            return "busy"
        return "accepted"

    def learn_base_url(self, host_url: str) -> None:
        """Without ``QUARTSIG_BASE_URL``, the address Telegram reached us at is the board's."""
        if self.base_url is None:
            self.base_url = host_url.rstrip("/")
