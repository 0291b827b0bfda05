"""The delivery worker against a real webhook receiver that checks signatures: sent once and
marked, retried on the schedule or as Retry-After says, 410 disables the endpoint, a crashed
worker's claim is taken over when its lease ends. Time is an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tortoise.context import TortoiseContext

from quartsig.alerts import storage
from quartsig.alerts.channels import Channel, Message, Outcome, Target
from quartsig.alerts.delivery import SCHEDULE, Deliverer, message_of, next_step
from quartsig.alerts.storage import AlertChannel, AlertDelivery
from quartsig.alerts.webhooks import WebhookChannel, new_secret
from quartsig.domain.model import Key
from tests.support.alertsdb import alerts_database, fire
from tests.support.clocks import HandClock
from tests.support.webhooks import Receiver, receiver

OWNER = 3003
KEY = Key("summary", "FX_IDC:EURUSD", "1h")
T0 = 1_700_000_000.0  # the injected wall clock, Unix seconds




@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[TortoiseContext]:
    async with alerts_database(tmp_path, OWNER) as context:
        yield context


@pytest.fixture
async def hook(db: TortoiseContext) -> AsyncIterator[Receiver]:
    async with receiver(new_secret()) as hook:
        yield hook


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookChannel]:
    channel = WebhookChannel()  # signs with the real clock: the receiver checks freshness
    try:
        yield channel
    finally:
        await channel.close()


async def _fire(*labels: str) -> None:
    """Write the triggers a rule on KEY makes of ``labels`` (each a minute apart)."""
    await fire(OWNER, KEY, labels, T0)


async def _endpoint(hook: Receiver, path: str, secret: str | None = None) -> int:
    return await storage.add_channel(OWNER, "webhook", hook.url(path),
                                     secret=secret or hook.secret)


def _worker(clock: HandClock, webhook: WebhookChannel, **options: Any) -> Deliverer:
    return Deliverer({"webhook": webhook}, clock=clock, rng=lambda: 0.5, **options)


async def test_a_trigger_is_delivered_signed_and_marked_sent(
        hook: Receiver, webhook: WebhookChannel) -> None:
    await _endpoint(hook, "/a")
    await _fire("NEUTRAL", "BUY")
    clock = HandClock(T0)
    assert await _worker(clock, webhook).drain() == 1
    [got] = hook.received
    assert got.valid and got.path == "/a" and got.id.startswith("msg_")
    assert (got.body["from"], got.body["to"], got.body["symbol"]) == (
        "NEUTRAL", "BUY", "FX_IDC:EURUSD")
    assert got.body["text"] == "EURUSD 1h: NEUTRAL → BUY"
    row = await AlertDelivery.get()
    assert (row.status, row.attempts, row.sent_at) == ("sent", 1, int(T0 * 1000))
    assert await _worker(clock, webhook).drain() == 0  # nothing is sent twice
    assert len(hook.received) == 1


async def test_failures_retry_on_the_schedule_with_the_same_id(
        hook: Receiver, webhook: WebhookChannel) -> None:
    await _endpoint(hook, "/flaky")
    hook.script("/flaky", [500, 503, 200])
    await _fire("NEUTRAL", "BUY")
    clock = HandClock(T0)
    worker = _worker(clock, webhook)
    await worker.drain()
    row = await AlertDelivery.get()
    assert (row.status, row.attempts, row.due, row.error) == (
        "pending", 1, int((T0 + SCHEDULE[0]) * 1000), "HTTP 500")
    clock.now += SCHEDULE[0] - 1
    assert await worker.drain() == 0  # not yet due
    clock.now += 1
    await worker.drain()
    clock.now += SCHEDULE[1]
    await worker.drain()
    assert [r.valid for r in hook.received] == [True, True, True]
    assert len({r.id for r in hook.received}) == 1  # the receiver can dedupe
    assert (await AlertDelivery.get()).status == "sent"


async def test_retry_after_is_honoured(hook: Receiver, webhook: WebhookChannel) -> None:
    await _endpoint(hook, "/busy")
    hook.script("/busy", [(429, {"Retry-After": "120"})])
    await _fire("NEUTRAL", "BUY")
    await _worker(HandClock(T0), webhook).drain()
    assert (await AlertDelivery.get()).due == int((T0 + 120) * 1000)


async def test_410_disables_the_endpoint(hook: Receiver, webhook: WebhookChannel) -> None:
    gone = await _endpoint(hook, "/gone")
    hook.script("/gone", [410])
    await _fire("NEUTRAL", "BUY")
    await _worker(HandClock(T0), webhook).drain()
    row = await AlertDelivery.get()
    assert (row.status, row.error) == ("failed", "410 Gone: the endpoint was removed")
    channel = await AlertChannel.get(id=gone)
    assert channel.state == "disabled"
    await _fire("SELL", "STRONG_SELL")  # a later trigger owes the disabled endpoint nothing
    assert await AlertDelivery.all().count() == 1


async def test_a_wrong_secret_is_refused_by_the_receiver_and_not_retried(
        hook: Receiver, webhook: WebhookChannel) -> None:
    await _endpoint(hook, "/x", secret=new_secret())
    await _fire("NEUTRAL", "BUY")
    await _worker(HandClock(T0), webhook).drain()
    assert [r.valid for r in hook.received] == [False]
    assert (await AlertDelivery.get()).status == "failed"


async def test_a_crashed_workers_claim_is_taken_over_after_its_lease(
        hook: Receiver, webhook: WebhookChannel) -> None:
    await _endpoint(hook, "/a")
    await _fire("NEUTRAL", "BUY")
    clock = HandClock(T0)
    [due] = await storage.due_deliveries(int(T0 * 1000))
    delivery_id = due.id
    assert await storage.claim(delivery_id, int(T0 * 1000), 60_000) is not None  # then "dies"
    worker = _worker(clock, webhook)
    assert await worker.drain() == 0 and hook.received == []
    clock.now += 60
    assert await worker.drain() == 1
    assert len(hook.valid("/a")) == 1 and (await AlertDelivery.get()).status == "sent"


async def test_two_workers_send_each_delivery_once(
        hook: Receiver, webhook: WebhookChannel) -> None:
    await _endpoint(hook, "/a")
    await _fire("NEUTRAL", "BUY", "SELL", "BUY", "STRONG_BUY", "NEUTRAL")
    clock = HandClock(T0)
    first, second = _worker(clock, webhook), _worker(clock, webhook)
    await asyncio.gather(first.drain(), second.drain())
    assert first.sent + second.sent == 5
    assert sorted(r.body["trigger"] for r in hook.received) == sorted(
        {r.body["trigger"] for r in hook.received})
    assert len(hook.received) == 5


async def test_an_unreachable_endpoint_is_retried(webhook: WebhookChannel,
                                                  db: TortoiseContext) -> None:
    await storage.add_channel(OWNER, "webhook", "http://127.0.0.1:9/nothing",
                              secret=new_secret())
    await _fire("NEUTRAL", "BUY")
    await _worker(HandClock(T0), webhook).drain()
    row = await AlertDelivery.get()
    assert row.status == "pending" and row.attempts == 1 and row.error


class _Raising:
    kind = "webhook"

    async def send(self, message: Message, target: Target) -> Outcome:
        raise KeyError("a plugin bug")


async def test_a_channel_that_raises_costs_one_retry(db: TortoiseContext) -> None:
    await storage.add_channel(OWNER, "webhook", "http://x", secret=new_secret())
    await _fire("NEUTRAL", "BUY")
    raising: Channel = _Raising()
    worker = Deliverer({"webhook": raising}, clock=HandClock(T0), rng=lambda: 0.5)
    await worker.drain()
    assert (await AlertDelivery.get()).error == "channel error: KeyError"


class _Waiting:
    """A channel whose pace never has a turn for it (a chat flooded for hours)."""

    kind = "telegram"

    def __init__(self) -> None:
        self.asked = 0

    async def send(self, message: Message, target: Target) -> Outcome:
        self.asked += 1
        return Outcome("later", "waiting for the chat's turn", 1.0)


async def test_waiting_for_a_turn_never_uses_up_the_retries(db: TortoiseContext) -> None:
    """A pace that says "later" is not a failed try: a delivery that waits its turn past the
    whole retry schedule is still pending, with no attempt counted."""
    await storage.add_channel(OWNER, "telegram", str(OWNER))
    await _fire("NEUTRAL", "BUY")
    clock, waiting = HandClock(T0), _Waiting()
    worker = Deliverer({"telegram": waiting}, clock=clock, rng=lambda: 0.5)
    for _ in range(len(SCHEDULE) + 5):
        await worker.drain()
        clock.now += 2.0
    row = await AlertDelivery.get()
    assert waiting.asked == len(SCHEDULE) + 5
    assert (row.status, row.attempts) == ("pending", 0)
    assert row.due == int((clock.now - 2.0 + 1.0) * 1000)


async def test_a_node_claims_only_the_kinds_it_can_send(db: TortoiseContext,
                                                        webhook: WebhookChannel) -> None:
    """``quartsig collect`` has no bot: its worker leaves a Telegram row alone (no claim that
    would hold it a lease for nothing) and does not wake for it either."""
    await storage.add_channel(OWNER, "telegram", str(OWNER))
    await _fire("NEUTRAL", "BUY")
    row = await AlertDelivery.get()
    assert await _worker(HandClock(T0), webhook).drain() == 0
    after = await AlertDelivery.get()
    assert (after.status, after.attempts, after.due) == ("pending", 0, row.due)
    assert await storage.next_due(kinds=["webhook"]) is None
    assert await storage.next_due(kinds=["webhook", "telegram"]) == row.due


def test_the_schedule_spans_a_day_then_gives_up() -> None:
    retry = Outcome("retry", "HTTP 500")
    pauses = [(next_step(retry, n, 0).due or 0) / 1000 for n in range(1, len(SCHEDULE) + 1)]
    assert pauses == list(SCHEDULE) and sum(pauses) > 86_400
    assert next_step(retry, len(SCHEDULE) + 1, 0).status == "failed"
    jittered = next_step(retry, 1, 0, jitter=0.0).due
    assert jittered == int(SCHEDULE[0] * 0.9 * 1000)
    assert next_step(Outcome("blocked", "403"), 1, 0).channel_state == "blocked"


def test_a_pause_notice_says_so() -> None:
    row = {"id": 1, "rule_id": 2, "profile": "summary", "symbol": "FX_IDC:EURUSD", "tf": "1h",
           "before": "firing", "after": "paused", "value": None, "bar": 0, "ts": 0,
           "dedupe": "ab" * 32}
    message = message_of(row)
    assert message.payload["type"] == "alert.paused" and "paused" in message.text
    assert message_of({**row, "before": "NEUTRAL", "after": "BUY"}).payload["type"] == (
        "alert.fired")
