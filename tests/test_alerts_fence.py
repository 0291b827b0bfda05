"""A leader frozen in the middle of its fenced write holds the fence row's lock; on PostgreSQL
the server ends its session once it has sat idle in the transaction for LOCK_TIMEOUT, so the
next leader's write gets through, and the frozen one's transaction writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from tortoise.context import TortoiseContext

from quartsig.access import accounts, database
from quartsig.alerts import storage
from quartsig.alerts.storage import AlertSeen
from quartsig.config import Settings
from quartsig.domain.model import Key
from tests.test_alerts_storage import POSTGRES_URL, _with_schema

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not POSTGRES_URL, reason="QUARTSIG_TEST_POSTGRES_URL unset")]

KEY = Key("summary", "FX_IDC:EURUSD", "1h")


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[TortoiseContext]:
    import uuid

    assert POSTGRES_URL
    schema = f"quartsig_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(
        urlunsplit(urlsplit(POSTGRES_URL)._replace(scheme="postgresql", query="")))
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    settings = Settings.from_env({}, data_dir=tmp_path / "data",
                                 database_url=_with_schema(POSTGRES_URL, schema))
    context = await database.init_database(settings)
    try:
        await accounts.add(1)
        await storage.ensure_fence()
        yield context
    finally:
        await database.close_database(context)
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


async def test_a_frozen_writer_is_cut_off_by_the_server_and_the_next_one_writes(
        pg: TortoiseContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "LOCK_TIMEOUT", 0.5)
    frozen, thawed = asyncio.Event(), asyncio.Event()
    real = AlertSeen.bulk_create

    async def freeze(*args: Any, **kwargs: Any) -> Any:
        """The old leader stops after raising the fence (it holds the row's lock)."""
        frozen.set()
        await thawed.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(AlertSeen, "bulk_create", freeze)
    old = asyncio.create_task(storage.write_triggers(
        [], 5, seen={KEY: ({"rec.all": "BUY"}, 1)}))
    await asyncio.wait_for(frozen.wait(), 30)
    monkeypatch.setattr(AlertSeen, "bulk_create", real)
    failures: list[Exception] = []
    async with asyncio.timeout(60):  # a bound, not a measure: it takes about LOCK_TIMEOUT
        while True:  # the recorder's way: a refused write is tried again
            try:
                await storage.write_triggers([], 6)
                break
            except Exception as error:  # a lock timeout while the frozen one holds the row
                failures.append(error)
    assert await storage.fence_term() == 6
    thawed.set()
    with pytest.raises(asyncpg.InterfaceError, match="connection is closed"):
        await asyncio.wait_for(old, 30)  # its session was ended by the server
    assert await storage.fence_term() == 6 and not await AlertSeen.all().exists()
