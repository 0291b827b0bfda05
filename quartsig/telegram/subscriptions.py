"""An account's Telegram alert channel: the ``alert_channel`` row whose target is its chat.

The user, not the board, turns it on and off, by talking to the bot: ``/start`` makes it (or
makes it active again), ``/stop`` stops it, a 403 from Telegram blocks it, and a blocked user
who writes to the bot again gets it back. A channel that is not active gets no deliveries
written, so a stopped user's triggers cost nothing. The row's ``reason`` is what the board's
alerts panel shows beside the state, so it is written for the user.

:mod:`quartsig.access.chats` (a layer below the alerts) keeps the chat's own flags; this
module moves the channel row with them.
"""

from __future__ import annotations

from typing import Final

from quartsig.access import chats
from quartsig.alerts import storage

KIND: Final = "telegram"
STOPPED: Final = "stopped"
BLOCKED: Final = "blocked"
STOPPED_REASON: Final = "alerts turned off with /stop; send /start to the bot to turn them on"
BLOCKED_REASON: Final = "the bot was blocked in Telegram"


async def started(tg_id: int) -> int:
    """``/start``: the channel exists and is active; its id."""
    return await storage.open_channel(tg_id, KIND, str(tg_id))


async def stopped(tg_id: int) -> None:
    """``/stop``: no more deliveries until ``/start``."""
    await storage.set_channels_state(tg_id, KIND, STOPPED, STOPPED_REASON)


async def blocked(tg_id: int) -> None:
    """Telegram answered 403 to a reply of the bot (the delivery worker marks the channel
    itself when an alert gets the 403)."""
    await storage.set_channels_state(tg_id, KIND, BLOCKED, BLOCKED_REASON, only=("active",))


async def heard_from(tg_id: int) -> None:
    """The user wrote to the bot: a blocked channel is active again (a stopped one stays
    stopped: that was their choice)."""
    await storage.set_channels_state(tg_id, KIND, "active", only=(BLOCKED,))


async def backfill() -> int:
    """Give the chats that sent ``/start`` before alert channels existed theirs (alerts on,
    no channel of this kind yet); how many were made. Safe to run on every start."""
    missing = await chats.with_alerts() - await storage.owners_with(KIND)
    for tg_id in sorted(missing):
        await storage.open_channel(tg_id, KIND, str(tg_id), reactivate=False)
    return len(missing)
