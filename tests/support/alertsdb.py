"""A fresh SQLite database with one account, for the alert tests that need storage."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tortoise.context import TortoiseContext

from quartsig.access import accounts, database
from quartsig.config import Settings


@contextlib.asynccontextmanager
async def alerts_database(where: Path, owner: int) -> AsyncIterator[TortoiseContext]:
    settings = Settings.from_env({}, data_dir=where / "data",
                                 database_url=f"sqlite://{where / 'alerts.sqlite3'}")
    context = await database.init_database(settings)
    try:
        await accounts.add(owner)
        yield context
    finally:
        await database.close_database(context)
