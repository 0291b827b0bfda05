"""The account's Telegram alert channel row (real SQLite): made once, the older row kept when
two nodes make it at once, and given to chats that sent /start before alert channels existed
(but not to one that sent /stop, nor made twice)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tortoise.context import TortoiseContext

from quartsig.access import chats
from quartsig.alerts import storage
from quartsig.telegram import subscriptions
from tests.support.alertsdb import alerts_database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[TortoiseContext]:
    async with alerts_database(tmp_path, 1) as context:
        yield context


async def test_two_starts_at_once_leave_one_row(db: TortoiseContext) -> None:
    first, second = await asyncio.gather(subscriptions.started(41), subscriptions.started(41))
    assert first == second
    assert [c["id"] for c in await storage.channels_of(41)] == [first]


async def test_chats_that_started_before_get_their_channel_once(db: TortoiseContext) -> None:
    await chats.set_alerts(51, True)
    await chats.set_alerts(52, False)  # sent /stop
    await chats.set_alerts(53, True)
    await subscriptions.started(53)
    await subscriptions.stopped(53)  # a row already, stopped: left as it is
    assert await subscriptions.backfill() == 1
    assert [(c["target"], c["state"]) for c in await storage.channels_of(51)] == [
        ("51", "active")]
    assert await storage.channels_of(52) == []
    assert [c["state"] for c in await storage.channels_of(53)] == ["stopped"]
    assert await subscriptions.backfill() == 0
