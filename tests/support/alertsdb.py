"""A fresh SQLite database with one account, for the alert tests that need storage, and a
burst of triggers written into it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from tortoise.context import TortoiseContext

from quartsig.access import accounts, database
from quartsig.alerts import storage
from quartsig.alerts.evaluation import Evaluator
from quartsig.config import Settings
from quartsig.domain.model import Key


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


async def fire(owner: int, key: Key, labels: Sequence[str], t0: float) -> list[int]:
    """The triggers one "any label change" rule of ``owner`` on ``key`` makes of ``labels``
    (a minute apart from ``t0``), written in one transaction as the recorder writes a burst;
    their ids."""
    rule = await storage.create_rule(owner, {"keys": [list(key)],
                                             "condition": {"kind": "label"}}, limit=10)
    evaluator = Evaluator()
    evaluator.add(rule)
    fired = []
    for i, value in enumerate(labels):
        fired += evaluator.evaluate([(key, {"rec.all": value}, int(t0 * 1000) + i * 60_000)])
    return (await storage.write_triggers(fired, term=1, now=t0)).triggers
