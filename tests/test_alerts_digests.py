"""Digests: a burst of triggers written in one transaction reaches a channel for people in one
``send_digest`` call (a channel of a plugin, registered through ``register_channels``), each
row still claimed, attempted and marked on its own; webhooks stay one request per trigger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from tortoise.context import TortoiseContext

from quartsig.alerts import storage, webhooks
from quartsig.alerts.channels import Channel, Digesting, Message, Outcome, Target, load_channels
from quartsig.alerts.delivery import SCHEDULE, Deliverer, groups
from quartsig.alerts.storage import AlertDelivery, Due
from quartsig.alerts.webhooks import WebhookChannel, new_secret
from quartsig.domain.model import Key
from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.loader import get_plugin_manager
from tests.support.alertsdb import alerts_database, fire
from tests.support.webhooks import Receiver, receiver

OWNER = 3004
KEY = Key("summary", "FX_IDC:EURUSD", "1h")
T0 = 1_700_000_000.0
BURST = ["NEUTRAL", "BUY", "STRONG_BUY", "BUY", "NEUTRAL", "SELL"]  # five moves


class Pager:
    """A plugin's channel for people: it can fold several messages into one."""

    kind = "pager"

    def __init__(self) -> None:
        self.singles: list[Message] = []
        self.digests: list[list[Message]] = []
        self.answer = Outcome("sent")

    async def send(self, message: Message, target: Target) -> Outcome:
        self.singles.append(message)
        return self.answer

    async def send_digest(self, messages: Sequence[Message], target: Target) -> Outcome:
        self.digests.append(list(messages))
        return self.answer


class PagerPlugin:
    def __init__(self) -> None:
        self.pager = Pager()

    @hookimpl
    def register_channels(self) -> list[Pager]:
        return [self.pager]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[TortoiseContext]:
    async with alerts_database(tmp_path, OWNER) as context:
        yield context


@pytest.fixture
async def hook(db: TortoiseContext) -> AsyncIterator[Receiver]:
    async with receiver(new_secret()) as hook:
        yield hook


@pytest.fixture
async def channels() -> AsyncIterator[tuple[dict[str, Channel], Pager]]:
    plugin = PagerPlugin()
    found = load_channels(get_plugin_manager(entry_points=False, extra=[plugin]), (webhooks,))
    try:
        yield found, plugin.pager
    finally:
        webhook = found["webhook"]
        assert isinstance(webhook, WebhookChannel)
        await webhook.close()


async def _burst() -> list[int]:
    """The triggers of BURST on one rule, written in one transaction (the recorder's way)."""
    return await fire(OWNER, KEY, BURST, T0)


def _worker(channels: dict[str, Channel], **options: object) -> Deliverer:
    return Deliverer(channels, clock=lambda: T0, rng=lambda: 0.5, **options)  # type: ignore[arg-type]


async def test_a_burst_arrives_as_one_digest_and_each_delivery_is_sent(
        channels: tuple[dict[str, Channel], Pager], hook: Receiver) -> None:
    found, pager = channels
    assert isinstance(pager, Digesting) and not isinstance(found["webhook"], Digesting)
    await storage.add_channel(OWNER, "pager", "chat-1")
    await storage.add_channel(OWNER, "webhook", hook.url("/w"), secret=hook.secret)
    written = await _burst()
    assert len(written) == 5
    worker = _worker(found)
    assert await worker.drain() == 10
    [digest] = pager.digests
    assert pager.singles == []
    assert [m.payload["trigger"] for m in digest] == written  # oldest first
    assert [m.text for m in digest][:2] == ["EURUSD 1h: NEUTRAL → BUY",
                                            "EURUSD 1h: BUY → STRONG_BUY"]
    assert len(hook.valid("/w")) == 5  # webhooks: one signed request per trigger
    [history] = [await storage.history(OWNER)]
    assert len(history) == 5
    for trigger in history:
        assert [(d["status"], d["attempts"]) for d in trigger["deliveries"]] == [
            ("sent", 1), ("sent", 1)]
    assert (worker.digests, worker.digested, worker.sent) == (1, 5, 10)


async def test_a_digest_is_capped_and_its_outcome_applies_to_every_row(
        channels: tuple[dict[str, Channel], Pager], db: TortoiseContext) -> None:
    found, pager = channels
    await storage.add_channel(OWNER, "pager", "chat-1")
    await _burst()
    pager.answer = Outcome("retry", "429 Too Many Requests", retry_after=None)
    worker = _worker(found, digest_cap=3)
    assert await worker.drain() == 5
    assert sorted(len(d) for d in pager.digests) == [2, 3]
    rows = await AlertDelivery.all().order_by("id")
    assert {(r.status, r.attempts, r.due, r.error) for r in rows} == {
        ("pending", 1, int((T0 + SCHEDULE[0]) * 1000), "429 Too Many Requests")}


async def test_announced_triggers_of_a_digesting_channel_take_its_other_due_rows(
        channels: tuple[dict[str, Channel], Pager], db: TortoiseContext) -> None:
    found, pager = channels
    await storage.add_channel(OWNER, "pager", "chat-1")
    written = await _burst()
    worker = _worker(found)
    assert await worker.deliver_triggers(written[-1:]) == 5  # one announced, the burst sent
    assert [len(d) for d in pager.digests] == [5]


def test_groups_fold_one_digesting_channel_rows_and_leave_the_rest_alone() -> None:
    due = [Due(1, 10, "pager", 0), Due(2, 20, "webhook", 0), Due(3, 10, "pager", 1),
           Due(4, 11, "pager", 1), Due(5, 10, "pager", 2), Due(6, 20, "webhook", 2)]
    assert groups(due, lambda kind: kind == "pager") == [[1, 3, 5], [2], [4], [6]]
    assert groups(due, lambda kind: kind == "pager", cap=2) == [[1, 3], [2], [4], [5], [6]]
    assert groups(due, lambda kind: False) == [[1], [2], [3], [4], [5], [6]]
