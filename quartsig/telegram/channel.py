"""The ``telegram`` alert channel: a trigger as a message from the bot, in the user's chat.

Channels are loaded when the app is built, the ``Bot`` only when :class:`BotService` starts,
so the channel holds the service and takes its bot at send time (none yet: try again soon).
Before each send it waits for its turn (:mod:`quartsig.cluster.pace`: about one message a
second per chat, 25 a second in all, across every node), at most :data:`MAX_WAIT` seconds
(far under the delivery's 60 s lease, so a claim never lapses while a node waits); a turn
further away is a retry at that time instead. Telegram's answers map to outcomes the delivery
worker acts on (:func:`outcome`): 429 holds the chat for ``retry_after`` on every node and
retries then, 403 blocks the channel and marks the chat unreachable, 400 fails, 5xx, network
trouble and timeouts retry.

The message (:func:`alert_reply`) is HTML with everything that came from users or data
escaped, and two buttons: "Open board" (a fresh token in the link's fragment) and "Mute this
rule" (``mute:<rule_id>``, handled by :func:`quartsig.telegram.commands.press`). A burst for one
chat becomes one message (:func:`digest_reply`, the :class:`~quartsig.alerts.channels.Digesting`
side of the channel).
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

from quartsig.access import chats
from quartsig.alerts.channels import Message, Outcome, Target
from quartsig.cluster.pace import MemoryPace, Pace, RedisPace
from quartsig.config import Settings
from quartsig.plugins.hookspecs import hookimpl
from quartsig.telegram.commands import Button, Desk, Reply, board_button
from quartsig.telegram.subscriptions import BLOCKED_REASON, KIND

if TYPE_CHECKING:
    from quartsig.telegram.service import BotService

log = logging.getLogger(__name__)

#: Longest wait for a turn before handing the delivery back as a retry at its turn.
MAX_WAIT: Final = 10.0
#: Seconds before a node without a running bot is asked again.
NO_BOT_RETRY: Final = 5.0
#: Triggers listed in a digest; the rest are counted.
DIGEST_LINES: Final = 15
MUTE: Final = "Mute this rule"


def alert_reply(message: Message, opener: Button | None) -> Reply:
    """One trigger: what moved, from what to what, and its two buttons."""
    payload = message.payload
    paused = payload.get("type") == "alert.paused"
    text = html.escape(message.text)
    profile = html.escape(str(payload.get("profile", "")))
    head = "⏸ <b>Alert paused</b>" if paused else "🔔 <b>Alert</b>"
    body = f"{head}\n{text}"
    if profile:
        body += f"\n<i>{profile}</i> · {html.escape(str(payload.get('symbol', '')))}"
    row = [opener] if opener is not None else []
    rule = payload.get("rule")
    if not paused and isinstance(rule, int) and not isinstance(rule, bool):
        row.append(Button(MUTE, callback=f"mute:{rule}"))
    return Reply(body, (tuple(row),) if row else ())


def digest_reply(messages: Sequence[Message], opener: Button | None) -> Reply:
    """Several triggers for one chat in one message: at most :data:`DIGEST_LINES` of them,
    then how many more."""
    lines = [f"🔔 <b>{len(messages)} alerts</b>"]
    lines += [f"• {html.escape(m.text)}" for m in messages[:DIGEST_LINES]]
    if len(messages) > DIGEST_LINES:
        lines.append(f"... and {len(messages) - DIGEST_LINES} more (the board's history "
                     "has them all)")
    return Reply("\n".join(lines), ((opener,),) if opener is not None else ())


def outcome(error: BaseException) -> Outcome:
    """What a failed ``sendMessage`` means for the delivery (see the module's doc)."""
    from aiogram.exceptions import (
        TelegramBadRequest,
        TelegramForbiddenError,
        TelegramNetworkError,
        TelegramRetryAfter,
        TelegramServerError,
    )

    if isinstance(error, TelegramRetryAfter):
        return Outcome("retry", "429 Too Many Requests", float(error.retry_after))
    if isinstance(error, TelegramForbiddenError):
        return Outcome("blocked", BLOCKED_REASON)
    if isinstance(error, TelegramBadRequest):
        return Outcome("failed", f"Telegram: {error.message}"[:200])
    if isinstance(error, TelegramServerError | TelegramNetworkError | TimeoutError | OSError):
        return Outcome("retry", f"Telegram: {error.__class__.__name__}: {error}"[:200])
    return Outcome("retry", f"{error.__class__.__name__}: {error}"[:200])


def pace_for(settings: Settings) -> Pace:
    """The cluster's schedule when clustered, this process's otherwise."""
    if settings.redis_url:
        return RedisPace.from_url(settings.redis_url, settings.redis_prefix)
    return MemoryPace()


class TelegramChannel:
    """Sends alerts through ``service``'s bot (see the module's doc)."""

    kind = KIND

    def __init__(self, service: BotService, pace: Pace | None = None, *,
                 settings: Settings | None = None, max_wait: float = MAX_WAIT,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.service = service
        self.settings = settings
        self._pace = pace
        self._owned = pace is None  # made here from the settings: closed here
        self.max_wait = max_wait
        self.sleep = sleep

    @property
    def pace(self) -> Pace:
        """Made on first use, inside the app's event loop (a Redis client is bound to it)."""
        if self._pace is None:
            self._pace = pace_for(self.settings) if self.settings is not None else MemoryPace()
        return self._pace

    async def close(self) -> None:
        if self._pace is not None and self._owned:
            await self._pace.close()
            self._pace = None

    async def send(self, message: Message, target: Target) -> Outcome:
        return await self._send(target, lambda desk, chat: alert_reply(
            message, board_button(desk, chat)))

    async def send_digest(self, messages: Sequence[Message], target: Target) -> Outcome:
        if len(messages) == 1:
            return await self.send(messages[0], target)
        return await self._send(target, lambda desk, chat: digest_reply(
            messages, board_button(desk, chat)))

    async def _send(self, target: Target, compose: Callable[[Desk, int], Reply]) -> Outcome:
        bot, desk = self.service.bot, self.service.desk()
        if bot is None or desk is None:
            return Outcome("later", "the bot is not running on this node", NO_BOT_RETRY)
        try:
            chat = int(target.address)
        except ValueError:
            return Outcome("failed", f"not a chat id: {target.address[:40]!r}")
        try:
            turn = await self.pace.turn(chat, self.max_wait)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # Redis away or answering nonsense: not Telegram's fault
            return Outcome("retry", f"pace: {error.__class__.__name__}: {error}"[:200])
        if not turn.granted:
            return Outcome("later", "waiting for the chat's turn (Telegram's limits)",
                           turn.wait)
        if turn.wait > 0:
            await self.sleep(turn.wait)
        reply = compose(desk, chat)
        from quartsig.telegram.worker import markup

        try:
            await bot.send_message(chat, reply.text, reply_markup=markup(reply))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            result = outcome(error)
            if result.retry_after is not None:  # a 429: every node leaves the chat alone
                try:
                    await self.pace.hold(chat, result.retry_after)
                except Exception as hold_error:  # the delivery still waits retry_after
                    log.warning("bot: cannot hold chat %s on the pace: %s", chat, hold_error)
            if result.status == "blocked":
                await chats.unreachable(chat)
                log.info("bot: chat %s blocked the bot; its alert channel is blocked", chat)
            return result
        return Outcome("sent")


class TelegramChannels:
    """The plugin that registers the channel for one app (``app.build_state`` registers it
    when ``QUARTSIG_BOT_TOKEN`` is set and the app runs the bot)."""

    def __init__(self, service: BotService, settings: Settings) -> None:
        self.service, self.settings = service, settings

    @hookimpl
    def register_channels(self) -> list[TelegramChannel]:
        return [TelegramChannel(self.service, settings=self.settings)]
