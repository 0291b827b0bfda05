"""Chats: the Telegram side of an account, which the bot learns by talking to its user.

Kept apart from :class:`~quartsig.access.accounts.Account` so that existing databases gain a
table (``generate_schemas(safe=True)`` creates it) instead of needing a column altered in: a row
exists once the bot has spoken with the user. ``unreachable`` is set when Telegram answers 403
(the user blocked the bot) and cleared when they write again; ``alerts`` is what ``/stop`` turns
off. The board shows the first; the alert channel reads both.
"""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from quartsig.access.tokens import check_tg_id

__all__ = ["Chat", "alerts_enabled", "heard_from", "is_unreachable", "set_alerts",
           "unreachable", "with_alerts"]


class Chat(Model):
    tg_id = fields.BigIntField(primary_key=True, generated=False)
    unreachable = fields.BooleanField(default=False)
    alerts = fields.BooleanField(default=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "chat"


async def heard_from(tg_id: int) -> None:
    """The user wrote to the bot: they can be reached again (one ``UPDATE``, no row made for
    strangers)."""
    await Chat.filter(tg_id=check_tg_id(tg_id), unreachable=True).update(unreachable=False)


async def unreachable(tg_id: int) -> None:
    """Telegram refused a message to this user (403): stop trying until they write again."""
    chat, _ = await Chat.get_or_create(tg_id=check_tg_id(tg_id))
    if not chat.unreachable:
        chat.unreachable = True
        await chat.save(update_fields=["unreachable", "updated_at"])


async def set_alerts(tg_id: int, enabled: bool) -> None:
    chat, _ = await Chat.get_or_create(tg_id=check_tg_id(tg_id))
    if chat.alerts != enabled:
        chat.alerts = enabled
        await chat.save(update_fields=["alerts", "updated_at"])


async def is_unreachable(tg_id: int) -> bool:
    chat = await Chat.get_or_none(tg_id=check_tg_id(tg_id))
    return bool(chat and chat.unreachable)


async def alerts_enabled(tg_id: int) -> bool:
    chat = await Chat.get_or_none(tg_id=check_tg_id(tg_id))
    return chat is None or chat.alerts


async def with_alerts() -> set[int]:
    """The chats whose alerts are on (``/start`` and no ``/stop`` since)."""
    return {int(row["tg_id"]) for row in await Chat.filter(alerts=True).values("tg_id")}
