"""The delivery worker: sends what the outbox owes, on any node, the database row the truth.

Every node runs one. It reads the pending deliveries that are due, *claims* each with one
conditional UPDATE (its ``due`` moves a lease ahead: of several nodes one wins, and a node that
dies mid-send leaves the delivery due again when the lease ends, so a crashed worker's work is
taken over without any coordination but the row), sends it through its channel and marks the
row. That is at-least-once: a crash between the send and the mark sends again, which receivers
absorb by ``webhook-id`` (a Telegram message has no such key: that window is one send long).

What happens after an answer is :func:`next_step`, pure: sent; retried at growing intervals
over a day (Standard Webhooks' schedule, with jitter), sooner or later as ``Retry-After`` says;
an endpoint that answers 410 is disabled, a Telegram chat that blocked the bot is marked
blocked, and the delivery fails with the reason (the history shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from quartsig.alerts import storage
from quartsig.alerts.channels import Channel, Message, Outcome, Target
from quartsig.alerts.evaluation import PAUSED

log = logging.getLogger(__name__)

#: Seconds before each retry (Standard Webhooks' suggestion): 5 s, 5 min, 30 min, 2 h, 5 h,
#: 10 h, 14 h, 20 h, 24 h; after the last one the delivery has failed.
SCHEDULE: Final = (5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400)
JITTER: Final = 0.1  # each pause is moved by up to this share either way


@dataclass(frozen=True, slots=True)
class Step:
    """What to write after one attempt."""

    status: str  # pending | sent | failed
    due: int | None = None  # Unix ms of the next try (pending)
    error: str = ""
    channel_state: str | None = None  # disabled | blocked: the channel row changes too


def next_step(outcome: Outcome, attempts: int, now: int, jitter: float = 0.5) -> Step:
    """The row's next state after attempt number ``attempts`` (1 for the first) answered
    ``outcome`` at ``now`` (Unix ms). ``jitter`` in [0, 1) picks where in the jitter band the
    pause lands (0.5: none)."""
    if outcome.status == "sent":
        return Step("sent")
    if outcome.status == "gone":
        return Step("failed", error=outcome.error, channel_state="disabled")
    if outcome.status == "blocked":
        return Step("failed", error=outcome.error, channel_state="blocked")
    if outcome.status == "failed" or attempts > len(SCHEDULE):
        return Step("failed", error=outcome.error or "gave up after a day of retries")
    pause = SCHEDULE[attempts - 1] * (1 + JITTER * (2 * jitter - 1))
    if outcome.retry_after is not None:
        pause = outcome.retry_after
    return Step("pending", due=now + int(pause * 1000), error=outcome.error)


def message_of(trigger: Mapping[str, Any]) -> Message:
    """What every channel sends for one trigger row."""
    ticker = str(trigger["symbol"]).rpartition(":")[2]
    paused = trigger["after"] == PAUSED
    if paused:
        text = (f"{ticker} {trigger['tf']}: your alert fired too often and is paused; "
                "unmute it on the board to resume")
    else:
        text = f"{ticker} {trigger['tf']}: {trigger['before']} → {trigger['after']}"
    payload = {
        "type": "alert.paused" if paused else "alert.fired",
        "trigger": trigger["id"],
        "rule": trigger["rule_id"],
        "profile": trigger["profile"],
        "symbol": trigger["symbol"],
        "tf": trigger["tf"],
        "from": trigger["before"],
        "to": trigger["after"],
        "value": trigger["value"],
        "bar": trigger["bar"],
        "ts": trigger["ts"],
        "text": text,
    }
    return Message(id=f"msg_{trigger['dedupe'][:32]}", payload=payload, text=text)


class Deliverer:
    def __init__(
        self,
        channels: Mapping[str, Channel],
        *,
        clock: Callable[[], float] = time.time,
        lease: float = 60.0,
        concurrency: int = 16,
        idle: float = 5.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.channels = channels
        self.clock = clock
        #: Seconds a claim lasts: above the slowest send, or a slow send is taken over.
        self.lease = lease
        self.idle = idle
        self.rng = rng
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self.sent = 0
        #: Set after every row marked (sent, failed or due again): tests wait on it.
        self.marked = asyncio.Event()

    def wake(self) -> None:
        """New deliveries were written: look now rather than at the next idle turn."""
        self._wake.set()

    def _now(self) -> int:
        return int(self.clock() * 1000)

    async def run(self) -> None:
        while True:
            try:
                await self.drain()
                upcoming = await storage.next_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("alerts: delivery turn failed; trying again", exc_info=True)
                upcoming = None
            wait = self.idle
            if upcoming is not None:
                wait = min(wait, max(0.0, (upcoming - self._now()) / 1000))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()

    async def drain(self) -> int:
        """Send every delivery due now; how many were attempted."""
        attempted = 0
        while True:
            due = await storage.due_deliveries(self._now())
            if not due:
                return attempted
            results = await asyncio.gather(*(self._deliver(i) for i in due))
            attempted += sum(results)
            if not any(results):  # all taken by other workers meanwhile
                return attempted

    async def _deliver(self, delivery_id: int) -> bool:
        async with self._slots:
            owed = await storage.claim(delivery_id, self._now(), int(self.lease * 1000))
            if owed is None:
                return False
            channel = self.channels.get(owed.channel["kind"])
            attempts = owed.attempts + 1
            if channel is None:
                outcome = Outcome("retry", f"no channel of kind {owed.channel['kind']!r} here")
            elif owed.channel["state"] != "active":
                outcome = Outcome("failed", f"channel {owed.channel['state']}: "
                                  f"{owed.channel['reason']}")
            else:
                target = Target(owed.channel["id"], owed.channel["kind"],
                                owed.channel["target"], owed.channel["secret"])
                try:
                    outcome = await channel.send(message_of(owed.trigger), target)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # a plugin's bug is this delivery's, not the worker's
                    log.exception("alerts: channel %r failed", owed.channel["kind"])
                    outcome = Outcome("retry", f"channel error: {error.__class__.__name__}")
            now = self._now()
            step = next_step(outcome, attempts, now, self.rng())
            await storage.mark(delivery_id, status=step.status, attempts=attempts, due=step.due,
                               error=step.error, sent_at=now if step.status == "sent" else None)
            if step.channel_state is not None:
                await storage.set_channel_state(owed.channel["id"], step.channel_state,
                                                step.error)
            if step.status == "sent":
                self.sent += 1
            self.marked.set()
            return True
