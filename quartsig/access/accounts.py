"""Accounts: who may hold a token, keyed by Telegram id.

An account is never deleted, only disabled: disabling is the operator's
"revoke", and keeping the row means re-adding the same person cannot silently
resurrect access that was taken away.

Clocks. ``updated_at`` is stamped by the database's clock on every change (an ``UPDATE`` that
sets it to the database's current time), never by the writer's, so a CLI on a host whose clock
lags still stamps the true instant. Inserts keep Tortoise's stamp (an ``INSERT`` default would
need a schema change, and a new row is active). Revocation does not read ``updated_at`` at all:
:func:`inactive_among` re-checks the connected accounts themselves, so a row changed by plain
SQL with any stamp is caught too.
"""

from __future__ import annotations

from collections.abc import Iterable

from tortoise import fields
from tortoise.expressions import RawSQL
from tortoise.models import Model

from quartsig.access.tokens import InvalidTelegramId, check_tg_id

__all__ = [
    "Account",
    "AccountError",
    "DisabledAccount",
    "InvalidTelegramId",
    "UnknownAccount",
    "add",
    "disable",
    "enable",
    "get_active",
    "inactive_among",
    "is_active",
    "list_accounts",
    "require_active",
]


class Account(Model):
    tg_id = fields.BigIntField(primary_key=True, generated=False)
    active = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    #: Stamped by the database on every change (see :func:`_set_active`), by Tortoise on insert.
    updated_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "account"
        ordering = ("tg_id",)

    def __str__(self) -> str:
        return f"account {self.tg_id} ({'active' if self.active else 'disabled'})"


class AccountError(LookupError):
    """An operation was refused because of an account's state; the message says which."""

    def __init__(self, tg_id: int, message: str) -> None:
        super().__init__(message)
        self.tg_id = tg_id


class UnknownAccount(AccountError):
    def __init__(self, tg_id: int) -> None:
        super().__init__(tg_id, f"account {tg_id} does not exist")


class DisabledAccount(AccountError):
    def __init__(self, tg_id: int) -> None:
        super().__init__(tg_id, f"account {tg_id} is disabled")


async def add(tg_id: int) -> tuple[Account, bool]:
    """Create the account if missing; ``(account, created)``.

    Idempotent: an existing account is returned untouched, so re-adding a
    disabled account leaves it disabled (check ``account.active``).
    """
    return await Account.get_or_create(tg_id=check_tg_id(tg_id), defaults={"active": True})


async def _set_active(tg_id: int, active: bool) -> Account:
    account = await Account.get_or_none(tg_id=check_tg_id(tg_id))
    if account is None:
        raise UnknownAccount(tg_id)
    if account.active != active:
        await Account.filter(tg_id=tg_id).update(active=active, updated_at=_database_now())
        account = await Account.get(tg_id=tg_id)
    return account


#: The database's "now", in the text form Tortoise stores in SQLite (so that rows it stamped and
#: rows the database stamped compare in order).
_NOW = {"sqlite": "strftime('%Y-%m-%d %H:%M:%f+00:00', 'now')"}


def _database_now() -> RawSQL:
    dialect = Account._meta.db.capabilities.dialect
    return RawSQL(_NOW.get(dialect, "CURRENT_TIMESTAMP"))


async def disable(tg_id: int) -> Account:
    """Disable an account (idempotent); raises :class:`UnknownAccount`."""
    return await _set_active(tg_id, False)


async def enable(tg_id: int) -> Account:
    """Enable an account (idempotent); raises :class:`UnknownAccount`."""
    return await _set_active(tg_id, True)


async def list_accounts() -> list[Account]:
    return await Account.all().order_by("tg_id")


async def get_active(tg_id: int) -> Account | None:
    """The account if it exists and is active; ``None`` for unknown, disabled or bad ids."""
    if not _valid(tg_id):
        return None
    return await Account.get_or_none(tg_id=tg_id, active=True)


async def is_active(tg_id: int) -> bool:
    return await get_active(tg_id) is not None


#: Ids per ``IN (...)`` query of :func:`inactive_among`.
BATCH = 500


async def inactive_among(tg_ids: Iterable[int], *, batch: int = BATCH) -> set[int]:
    """Those of ``tg_ids`` whose account is disabled or gone, whatever stamped the row.

    The per-tick revocation check: ``SELECT tg_id FROM account WHERE tg_id IN (...) AND
    active`` in batches of ``batch``, the complement being the answer, so a row deleted or
    disabled by hand with a stale ``updated_at`` is caught as surely as one disabled by the CLI.
    """
    wanted = sorted({tg_id for tg_id in tg_ids if _valid(tg_id)})
    inactive: set[int] = set()
    for start in range(0, len(wanted), batch):
        chunk = wanted[start : start + batch]
        active = await Account.filter(tg_id__in=chunk, active=True).values_list(
            "tg_id", flat=True
        )
        inactive.update(set(chunk) - {int(str(tg_id)) for tg_id in active})
    return inactive


def _valid(tg_id: object) -> bool:
    try:
        check_tg_id(tg_id)
    except InvalidTelegramId:
        return False
    return True


async def require_active(tg_id: int) -> Account:
    """The active account, or :class:`UnknownAccount` / :class:`DisabledAccount` saying why."""
    account = await Account.get_or_none(tg_id=check_tg_id(tg_id))
    if account is None:
        raise UnknownAccount(tg_id)
    if not account.active:
        raise DisabledAccount(tg_id)
    return account
