"""Accounts against SQLite always, and PostgreSQL when QUARTSIG_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from tortoise import timezone as tortoise_timezone
from tortoise.context import TortoiseContext

from quartsig.access import accounts, database
from quartsig.access.tokens import MAX_TG_ID
from quartsig.config import Settings

POSTGRES_URL = os.environ.get("QUARTSIG_TEST_POSTGRES_URL")


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&schema={schema}" if parts.query else f"schema={schema}"
    return urlunsplit(parts._replace(query=query))


def _asyncpg_dsn(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql", query=""))


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not POSTGRES_URL, reason="QUARTSIG_TEST_POSTGRES_URL unset"),
            ],
        ),
    ]
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database per test: a new SQLite file, or a new PostgreSQL schema dropped after."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'nested' / 'accounts.sqlite3'}"
        return
    assert POSTGRES_URL
    schema = f"quartsig_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        yield _with_schema(POSTGRES_URL, schema)
    finally:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.from_env({}, data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[TortoiseContext]:
    context = await database.init_database(settings)
    try:
        yield context
    finally:
        await database.close_database(context)


async def test_add_is_idempotent(db: TortoiseContext) -> None:
    account, created = await accounts.add(42)
    assert created
    assert (account.tg_id, account.active) == (42, True)
    again, created = await accounts.add(42)
    assert not created
    assert again.created_at == account.created_at
    assert [a.tg_id for a in await accounts.list_accounts()] == [42]


async def test_concurrent_adds_write_one_row(db: TortoiseContext) -> None:
    results = await asyncio.gather(*(accounts.add(7) for _ in range(8)))
    assert sum(created for _, created in results) == 1
    assert [a.tg_id for a in await accounts.list_accounts()] == [7]


async def test_disable_and_enable(db: TortoiseContext) -> None:
    created, _ = await accounts.add(42)
    disabled = await accounts.disable(42)
    assert not disabled.active
    assert disabled.updated_at > created.updated_at
    assert await accounts.get_active(42) is None
    with pytest.raises(accounts.DisabledAccount, match="42 is disabled"):
        await accounts.require_active(42)
    assert (await accounts.disable(42)).active is False  # idempotent
    assert (await accounts.enable(42)).active is True
    assert (await accounts.get_active(42)).tg_id == 42  # type: ignore[union-attr]


async def test_re_adding_a_disabled_account_keeps_it_disabled(db: TortoiseContext) -> None:
    await accounts.add(42)
    await accounts.disable(42)
    account, created = await accounts.add(42)
    assert not created
    assert not account.active


async def test_unknown_ids(db: TortoiseContext) -> None:
    assert await accounts.get_active(99) is None
    for operation in (accounts.disable, accounts.enable, accounts.require_active):
        with pytest.raises(accounts.UnknownAccount, match="99 does not exist"):
            await operation(99)


async def test_full_bigint_range_is_stored(db: TortoiseContext) -> None:
    await accounts.add(MAX_TG_ID)
    await accounts.add(1)
    assert [a.tg_id for a in await accounts.list_accounts()] == [1, MAX_TG_ID]
    assert (await accounts.require_active(MAX_TG_ID)).tg_id == MAX_TG_ID


@pytest.mark.parametrize("bad", [0, -42, MAX_TG_ID + 1, True, "42"])
async def test_invalid_ids_never_reach_the_database(db: TortoiseContext, bad: object) -> None:
    for operation in (accounts.add, accounts.disable, accounts.enable, accounts.require_active):
        with pytest.raises(accounts.InvalidTelegramId):
            await operation(bad)  # type: ignore[arg-type]
    assert await accounts.get_active(bad) is None  # type: ignore[arg-type]
    assert await accounts.list_accounts() == []


async def test_schema_setup_is_safe_on_every_start(settings: Settings) -> None:
    async with database.open_database(settings):
        await accounts.add(42)
    await database.prepare_schema(settings)  # a second start must neither fail nor wipe
    async with database.open_database(settings):
        assert [a.tg_id for a in await accounts.list_accounts()] == [42]


async def test_open_database_is_isolated_to_its_task(settings: Settings) -> None:
    go = asyncio.Event()

    async def elsewhere() -> None:
        await go.wait()
        await accounts.add(43)

    task = asyncio.create_task(elsewhere())  # its context is copied now, before the database
    async with database.open_database(settings) as context:
        await accounts.add(42)
        await database.ping(context)
        go.set()
        with pytest.raises(Exception, match="TortoiseContext"):
            await task
        assert [a.tg_id for a in await accounts.list_accounts()] == [42]


async def _stale_disable_by_sql(db: TortoiseContext, tg_id: int) -> None:
    """What an operator's plain SQL does: no CLI, and an ``updated_at`` a day in the past."""
    stale = datetime.now(UTC) - timedelta(days=1)
    connection = db.db()
    mark = "$1" if connection.capabilities.dialect == "postgres" else "?"
    await connection.execute_query(
        f"UPDATE account SET active = {'false' if mark == '$1' else '0'}, "
        f"updated_at = {mark} WHERE tg_id = {mark.replace('1', '2')}",
        [stale if mark == "$1" else str(stale), tg_id],
    )


async def test_inactive_among_finds_accounts_disabled_by_sql_with_a_stale_stamp(
    db: TortoiseContext,
) -> None:
    for tg_id in (1, 2, 3):
        await accounts.add(tg_id)
    await _stale_disable_by_sql(db, 2)
    assert not await accounts.is_active(2)
    # 99 was never added (or was deleted by hand): just as inactive.
    assert await accounts.inactive_among([1, 2, 3, 99]) == {2, 99}
    assert await accounts.inactive_among([]) == set()


async def test_inactive_among_asks_in_batches(db: TortoiseContext) -> None:
    ids = list(range(1, 1_201))
    await accounts.Account.bulk_create([accounts.Account(tg_id=i) for i in ids])
    for tg_id in (1, 600, 1_200):
        await accounts.disable(tg_id)
    queries: list[str] = []
    original = db.db().execute_query

    async def counting(query: str, values: Any = None) -> Any:
        queries.append(query)
        return await original(query, values)

    db.db().execute_query = counting  # type: ignore[method-assign]
    try:
        assert await accounts.inactive_among(ids) == {1, 600, 1_200}
    finally:
        del db.db().execute_query
    assert len([q for q in queries if " IN " in q.upper()]) == 3  # 500 + 500 + 200


async def test_changes_are_stamped_by_the_database_clock(
    db: TortoiseContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    await accounts.add(5)
    lagging = datetime.now(UTC) - timedelta(hours=2)  # the writer's clock, two hours behind
    monkeypatch.setattr(tortoise_timezone, "localtime", lambda *args, **kwargs: lagging)
    monkeypatch.setattr(tortoise_timezone, "now", lambda: lagging)
    account = await accounts.disable(5)
    [row] = await db.db().execute_query_dict("SELECT CURRENT_TIMESTAMP AS now")
    database_now = row["now"]
    if isinstance(database_now, str):  # SQLite: "YYYY-MM-DD HH:MM:SS", UTC
        database_now = datetime.fromisoformat(database_now).replace(tzinfo=UTC)
    assert database_now - timedelta(hours=1) < account.updated_at <= database_now + timedelta(
        seconds=1
    )
