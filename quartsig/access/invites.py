"""Invites: one-time codes an operator mints (``quartsig invite``) for ``QUARTSIG_SIGNUP=invite``.

A code travels in a ``t.me/<bot>?start=<code>`` deep link, so it uses only the characters
Telegram allows there (``A-Za-z0-9_-``, at most 64). Redeeming is one conditional ``UPDATE``
(``WHERE used_by IS NULL``), so two nodes handling the same code at once cannot both succeed.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from tortoise import fields
from tortoise.models import Model

from quartsig.access.tokens import check_tg_id

__all__ = ["Invite", "looks_like_code", "mint", "redeem"]

_CODE = re.compile(r"[A-Za-z0-9_-]{8,64}")


class Invite(Model):
    code = fields.CharField(max_length=64, primary_key=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    used_by = fields.BigIntField(null=True)
    used_at = fields.DatetimeField(null=True)

    class Meta:
        table = "invite"


def looks_like_code(text: str) -> bool:
    return bool(_CODE.fullmatch(text))


async def mint() -> str:
    """A new unused code (16 url-safe characters: 96 random bits)."""
    code = secrets.token_urlsafe(12)
    await Invite.create(code=code)
    return code


async def redeem(code: str, tg_id: int) -> bool:
    """Spend ``code`` for ``tg_id``; False when it does not exist or was spent already."""
    if not looks_like_code(code):
        return False
    spent = await Invite.filter(code=code, used_by__isnull=True).update(
        used_by=check_tg_id(tg_id), used_at=datetime.now(UTC))
    return bool(spent)
