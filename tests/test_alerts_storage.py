"""Alert storage on SQLite always and PostgreSQL when QUARTSIG_TEST_POSTGRES_URL is set: rules
with a per-account limit, and the fenced outbox write (a trigger with its deliveries, once)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from tortoise.context import TortoiseContext

from quartsig.access import accounts, database
from quartsig.alerts import storage
from quartsig.alerts.evaluation import Evaluator, Trigger
from quartsig.alerts.rules import Rule, RuleError
from quartsig.alerts.storage import (
    AlertDelivery,
    AlertFence,
    AlertRule,
    AlertTrigger,
    Fenced,
    RuleLimit,
    UnknownRule,
)
from quartsig.config import Settings
from quartsig.domain.model import Key

POSTGRES_URL = os.environ.get("QUARTSIG_TEST_POSTGRES_URL")
OWNER = 1001
KEY = Key("summary", "FX_IDC:EURUSD", "1h")
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
SPEC: dict[str, Any] = {"keys": [list(KEY)],
                        "condition": {"kind": "label", "to": ["BUY", "STRONG_BUY"]}}


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&schema={schema}" if parts.query else f"schema={schema}"
    return urlunsplit(parts._replace(query=query))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="QUARTSIG_TEST_POSTGRES_URL unset")])])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TortoiseContext]:
    """A fresh database per test (a new SQLite file or PostgreSQL schema) with one account."""
    schema = f"quartsig_test_{uuid.uuid4().hex[:12]}"
    admin = None
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'alerts.sqlite3'}"
    else:
        assert POSTGRES_URL
        admin = await asyncpg.connect(
            urlunsplit(urlsplit(POSTGRES_URL)._replace(scheme="postgresql", query="")))
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        url = _with_schema(POSTGRES_URL, schema)
    settings = Settings.from_env({}, data_dir=tmp_path / "data", database_url=url)
    context = await database.init_database(settings)
    try:
        await accounts.add(OWNER)
        await storage.ensure_fence()
        yield context
    finally:
        await database.close_database(context)
        if admin is not None:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()


async def _fired(rule: Rule, labels: list[str], start: int = T0) -> list[Trigger]:
    evaluator = Evaluator()
    evaluator.add(rule)
    fired: list[Trigger] = []
    for i, value in enumerate(labels):
        fired += evaluator.evaluate([(KEY, {"rec.all": value}, start + i * 60_000)])
    return fired


async def test_rules_are_stored_versioned_and_limited(db: TortoiseContext) -> None:
    rule = await storage.create_rule(OWNER, SPEC, limit=2)
    assert rule.id and rule.version == 1 and rule.keys == (KEY,)
    edited = await storage.update_rule(OWNER, rule.id, spec={**SPEC, "frequency": "once_per_bar"})
    assert (edited.version, edited.frequency) == (2, "once_per_bar")
    muted = await storage.update_rule(OWNER, rule.id, muted=True)
    assert muted.muted and muted.version == 2
    await storage.create_rule(OWNER, SPEC, limit=2)
    with pytest.raises(RuleLimit, match="at most 2"):
        await storage.create_rule(OWNER, SPEC, limit=2)
    await storage.delete_rule(OWNER, rule.id)
    assert [r.id for r in await storage.rules_of(OWNER)] != [rule.id]
    with pytest.raises(UnknownRule):
        await storage.delete_rule(OWNER, rule.id)
    with pytest.raises(UnknownRule):  # another account's rule is not yours to change
        await storage.update_rule(OWNER + 1, (await storage.rules_of(OWNER))[0].id, muted=True)


async def test_bad_specs_and_unknown_accounts_are_refused(db: TortoiseContext) -> None:
    with pytest.raises(RuleError, match="frequency"):
        await storage.create_rule(OWNER, {**SPEC, "frequency": "hourly"}, limit=5)
    with pytest.raises(accounts.UnknownAccount):
        await storage.create_rule(OWNER + 1, SPEC, limit=5)
    await accounts.disable(OWNER)
    with pytest.raises(accounts.DisabledAccount):
        await storage.create_rule(OWNER, SPEC, limit=5)
    assert await AlertRule.all().count() == 0


async def test_a_trigger_is_written_once_with_its_deliveries(db: TortoiseContext) -> None:
    rule = await storage.create_rule(OWNER, SPEC, limit=5)
    hook = await storage.add_channel(OWNER, "webhook", "http://127.0.0.1:1/h", secret="whsec_x")
    chat = await storage.add_channel(OWNER, "telegram", str(OWNER))
    gone = await storage.add_channel(OWNER, "webhook", "http://127.0.0.1:1/gone")
    await storage.set_channel_state(gone, "disabled", "410 Gone")
    fired = await _fired(rule, ["NEUTRAL", "BUY", "SELL", "STRONG_BUY"])
    assert len(fired) == 2
    written = await storage.write_triggers(fired, term=3)
    assert len(written.triggers) == 2 and written.deliveries == 4
    rows = await AlertDelivery.all().values("trigger_id", "channel_id", "status")
    assert {(r["channel_id"], r["status"]) for r in rows} == {(hook, "pending"), (chat, "pending")}
    # the same publication again (a retry), or the next leader evaluating the same change
    again = await storage.write_triggers(await _fired(rule, ["NEUTRAL", "BUY"]), term=4)
    assert again.triggers == [] and await AlertTrigger.all().count() == 2
    assert await AlertDelivery.all().count() == 4
    trigger = await AlertTrigger.get(id=written.triggers[0])
    assert (trigger.before, trigger.after, trigger.term, trigger.bar) == ("NEUTRAL", "BUY", 3, T0)
    assert await storage.fence_term() == 4


async def test_a_lower_term_writes_nothing(db: TortoiseContext) -> None:
    rule = await storage.create_rule(OWNER, SPEC, limit=5)
    await storage.add_channel(OWNER, "telegram", str(OWNER))
    await storage.write_triggers([], term=7)  # the leader of term 7 has published
    stale = await _fired(rule, ["NEUTRAL", "BUY"])
    with pytest.raises(Fenced):
        await storage.write_triggers(stale, term=6)
    assert await AlertTrigger.all().count() == 0 and await AlertDelivery.all().count() == 0
    assert await storage.fence_term() == 7
    assert len((await storage.write_triggers(stale, term=7)).triggers) == 1


async def test_a_failure_inside_the_transaction_leaves_nothing(
        db: TortoiseContext, monkeypatch: pytest.MonkeyPatch) -> None:
    rule = await storage.create_rule(OWNER, SPEC, limit=5)
    await storage.add_channel(OWNER, "telegram", str(OWNER))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(AlertDelivery, "bulk_create", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        await storage.write_triggers(await _fired(rule, ["NEUTRAL", "BUY"]), term=9)
    assert await AlertTrigger.all().count() == 0
    assert (await AlertFence.get(id=storage.FENCE_ID)).term == 0


async def test_triggers_of_changed_muted_or_deleted_rules_are_left_out(
        db: TortoiseContext) -> None:
    edited = await storage.create_rule(OWNER, SPEC, limit=5)
    muted = await storage.create_rule(OWNER, SPEC, limit=5)
    deleted = await storage.create_rule(OWNER, SPEC, limit=5)
    kept = await storage.create_rule(OWNER, SPEC, limit=5)
    fired = []
    for rule in (edited, muted, deleted, kept):
        fired += await _fired(rule, ["NEUTRAL", "BUY"])
    await storage.update_rule(OWNER, edited.id, spec=SPEC)
    await storage.update_rule(OWNER, muted.id, muted=True)
    await storage.delete_rule(OWNER, deleted.id)
    await storage.write_triggers(fired, term=1)
    assert await AlertTrigger.all().values_list("rule_id", flat=True) == [kept.id]


async def test_an_only_once_rule_is_spent_by_its_trigger(db: TortoiseContext) -> None:
    rule = await storage.create_rule(OWNER, {**SPEC, "frequency": "only_once"}, limit=5)
    await storage.write_triggers(await _fired(rule, ["NEUTRAL", "BUY"]), term=1)
    assert await storage.live_rules() == []
    assert (await storage.update_rule(OWNER, rule.id, spec=SPEC)).version == 2
    assert [r.id for r in await storage.live_rules()] == [rule.id]  # edited: live again


async def test_concurrent_writers_of_the_same_change_write_it_once(db: TortoiseContext) -> None:
    rule = await storage.create_rule(OWNER, SPEC, limit=5)
    await storage.add_channel(OWNER, "telegram", str(OWNER))
    fired = await _fired(rule, ["NEUTRAL", "BUY", "SELL", "BUY"])
    results = await asyncio.gather(*(storage.write_triggers(fired, term=2) for _ in range(4)),
                                   return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results), results
    assert await AlertTrigger.all().count() == 2 and await AlertDelivery.all().count() == 2


async def test_history_shows_each_trigger_and_its_deliveries(db: TortoiseContext) -> None:
    rule = await storage.create_rule(OWNER, SPEC, limit=5)
    chat = await storage.add_channel(OWNER, "telegram", str(OWNER))
    await storage.write_triggers(await _fired(rule, ["NEUTRAL", "BUY", "SELL", "BUY"]), term=1)
    rows = await storage.history(OWNER)
    assert [(r["before"], r["after"]) for r in rows] == [("SELL", "BUY"), ("NEUTRAL", "BUY")]
    assert rows[0]["deliveries"] == [{"channel_id": chat, "status": "pending", "attempts": 0,
                                      "error": "", "sent_at": None}]
    assert await storage.history(OWNER + 1) == []


async def test_a_pause_notice_mutes_its_rule_and_is_delivered(db: TortoiseContext) -> None:
    rule = await storage.create_rule(OWNER, {**SPEC, "condition": {"kind": "label"}}, limit=5)
    await storage.add_channel(OWNER, "telegram", str(OWNER))
    evaluator = Evaluator(storm=(1, 3600.0))
    evaluator.add(rule)
    fired = []
    for i, value in enumerate(["NEUTRAL", "BUY", "SELL"]):
        fired += evaluator.evaluate([(KEY, {"rec.all": value}, T0 + i * 60_000)])
    assert [t.after for t in fired] == ["BUY", "paused"]
    written = await storage.write_triggers(fired, term=1)
    assert len(written.triggers) == 2 and written.deliveries == 2
    assert (await AlertRule.get(id=rule.id)).muted
