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

Digests. A channel for people that is :class:`~quartsig.alerts.channels.Digesting` gets the
deliveries of one channel row that are due together in one ``send_digest`` call (at most
:data:`DIGEST_CAP`), so a burst written in one transaction reads as one message; every row is
still claimed by its own conditional UPDATE, and the one outcome is applied to each row as if
it had been sent alone (:func:`groups` decides, pure). Webhooks stay one request per trigger:
a machine dedupes on ``webhook-id``, which a digest would blur.

Two ways to learn what is owed. Alone, the recorder wakes the worker of its own process. In a
cluster the recorder announces the trigger ids it committed on a Redis stream
(:mod:`quartsig.alerts.announcements`); each node's worker reads its share through a consumer
group, claims the rows as always, and acknowledges the entries once they are marked. The
database poll stays, slower, as the safety net for an announcement lost (a crash between the
commit and the XADD, Redis away): it then runs at the fast pace until the stream answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from quartsig.alerts import storage
from quartsig.alerts.announcements import Announcements
from quartsig.alerts.channels import Channel, Digesting, Message, Outcome, Target
from quartsig.alerts.evaluation import PAUSED
from quartsig.ops.logs import Sparse

log = logging.getLogger(__name__)

#: Seconds before each retry (Standard Webhooks' suggestion): 5 s, 5 min, 30 min, 2 h, 5 h,
#: 10 h, 14 h, 20 h, 24 h; after the last one the delivery has failed.
SCHEDULE: Final = (5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400)
JITTER: Final = 0.1  # each pause is moved by up to this share either way
#: Seconds a delivery whose channel said "later" without saying when waits.
LATER: Final = 5.0
#: Deliveries of one channel row folded into one digest at most (a longer burst: several).
DIGEST_CAP: Final = 20
#: Seconds an announcement read blocks before the worker looks around again.
BLOCK: Final = 1.0
#: Seconds between two tries of the stream while Redis is away (the poll delivers meanwhile).
STREAM_PAUSE: Final = 1.0


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
    if outcome.status == "later":
        wait = LATER if outcome.retry_after is None else outcome.retry_after
        return Step("pending", due=now + int(wait * 1000), error=outcome.error)
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


def groups(due: Sequence[storage.Due], digesting: Callable[[str], bool],
           cap: int = DIGEST_CAP) -> list[list[int]]:
    """The due deliveries in the order they are sent, as groups of ids: the rows of one
    channel row whose kind digests go together (oldest first, ``cap`` at most per group),
    every other row alone."""
    out: list[list[int]] = []
    open_: dict[int, list[int]] = {}
    for row in due:
        if not digesting(row.kind):
            out.append([row.id])
            continue
        group = open_.get(row.channel)
        if group is None or len(group) >= cap:
            group = open_[row.channel] = []
            out.append(group)
        group.append(row.id)
    return out


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
        poll: float = 30.0,
        announcements: Announcements | None = None,
        rng: Callable[[], float] = random.random,
        digest_cap: int = DIGEST_CAP,
    ) -> None:
        self.channels = channels
        self.clock = clock
        #: Seconds a claim lasts: above the slowest send, or a slow send is taken over.
        self.lease = lease
        #: Seconds between two polls of the database without a stream (or with it away)...
        self.idle = idle
        #: ...and while the stream carries the announcements (a safety net only).
        self.poll = poll
        self.announcements = announcements
        self.rng = rng
        self.digest_cap = digest_cap
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        #: Whether the stream answered last time (else the poll runs at the ``idle`` pace).
        self.streaming = announcements is not None
        self._stream_failures = Sparse()
        self.sent = 0
        #: Deliveries sent in a digest (each also counts in ``sent``), and the digests.
        self.digested = 0
        self.digests = 0
        #: Set after every row marked (sent, failed or due again): tests wait on it.
        self.marked = asyncio.Event()

    def wake(self) -> None:
        """New deliveries were written: look now rather than at the next idle turn."""
        self._wake.set()

    async def written(self, triggers: Sequence[int]) -> None:
        """The recorder's hook after a commit: announce the triggers on the stream, or wake
        this node's poll (no stream, or the stream refused them: the poll must not wait)."""
        if not triggers:
            return
        if self.announcements is None:
            self.wake()
            return
        try:
            async with asyncio.timeout(BLOCK + 1.0):
                await self.announcements.announce(triggers)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._stream_failed(error)
            self.wake()

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def _digesting(self, kind: str) -> bool:
        return isinstance(self.channels.get(kind), Digesting)

    async def run(self) -> None:
        """The worker: the database poll, and the stream's consumer when there is one. A
        failure of either ends both (the supervisor restarts the worker)."""
        if self.announcements is None:
            await self._polling()
            return
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._polling())
                group.create_task(self._consuming())
        except ExceptionGroup as failed:  # the supervisor's log and health name the bug
            raise failed.exceptions[0] from failed

    async def _polling(self) -> None:
        while True:
            try:
                await self.drain()
                upcoming = await storage.next_due(kinds=self.channels.keys())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("alerts: delivery turn failed; trying again", exc_info=True)
                upcoming = None
            wait = self.poll if self.streaming else self.idle
            if upcoming is not None:
                wait = min(wait, max(0.0, (upcoming - self._now()) / 1000))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()

    async def _consuming(self) -> None:
        """Read the stream and handle each read in its own task, so one slow send (a webhook
        taking its 5 s) does not hold the next announcements back; at most ``concurrency``
        reads in flight."""
        assert self.announcements is not None
        inflight: set[asyncio.Task[bool]] = set()
        try:
            while True:
                while len(inflight) >= self.concurrency:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                entries = await self._take(BLOCK)
                if entries is None:
                    await asyncio.sleep(STREAM_PAUSE)
                elif entries:
                    task = asyncio.create_task(self._handle(entries))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
        finally:
            for task in inflight:
                task.cancel()

    async def consume(self, block: float = BLOCK) -> bool:
        """One read of the stream: claim and send what its entries announce, then acknowledge
        them. False when the stream failed (the poll takes over at its fast pace)."""
        entries = await self._take(block)
        if entries is None:
            return False
        return await self._handle(entries)

    async def _take(self, block: float) -> list[tuple[bytes, int]] | None:
        assert self.announcements is not None
        try:
            entries = await self.announcements.read(block)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._stream_failed(error)
            return None
        if not self.streaming:
            log.info("alerts: the delivery stream answers again")
            self.streaming = True
        return entries

    async def _handle(self, entries: Sequence[tuple[bytes, int]]) -> bool:
        assert self.announcements is not None
        if not entries:
            return True
        try:
            await self.deliver_triggers([trigger for _, trigger in entries])
        except asyncio.CancelledError:
            raise
        except Exception:  # the database: the entries stay pending and come back after the
            log.warning("alerts: delivering announced triggers failed", exc_info=True)
            return True  # lease (and the poll looks too)
        try:
            await self.announcements.ack([entry for entry, _ in entries])
        except asyncio.CancelledError:
            raise
        except Exception as error:  # pending, they come back after the lease: claims refuse
            self._stream_failed(error)
            return False
        return True

    def _stream_failed(self, error: BaseException) -> None:
        if (held := self._stream_failures.due()) is not None:
            log.warning("alerts: the delivery stream failed (%s: %s; %d more since); the "
                        "database poll delivers meanwhile", error.__class__.__name__, error,
                        held)
        if self.streaming:
            self.streaming = False
            self.wake()  # the poll now runs at its fast pace

    async def drain(self) -> int:
        """Send every delivery due now; how many were attempted."""
        attempted = 0
        while True:
            due = await storage.due_deliveries(self._now(), kinds=self.channels.keys())
            if not due:
                return attempted
            done = await self._send_all(due)
            attempted += done
            if not done:  # all taken by other workers meanwhile
                return attempted

    async def deliver_triggers(self, triggers: Sequence[int]) -> int:
        """Send the due deliveries of ``triggers`` (announced on the stream), with, for a
        digesting channel, whatever else that channel row has due; how many were attempted."""
        if not triggers:
            return 0
        now = self._now()
        due = await storage.due_of_triggers(triggers, now, kinds=self.channels.keys())
        digesting = {row.channel for row in due if self._digesting(row.kind)}
        if digesting:
            known = {row.id for row in due}
            due += [row for row in await storage.due_on_channels(digesting, now)
                    if row.id not in known]
            due.sort(key=lambda row: (row.due, row.id))
        return await self._send_all(due)

    async def _send_all(self, due: Sequence[storage.Due]) -> int:
        results = await asyncio.gather(*(self._deliver(group) for group in groups(
            due, self._digesting, self.digest_cap)))
        return sum(results)

    async def _deliver(self, ids: Sequence[int]) -> int:
        """Claim ``ids`` (one channel row's when several), send them, mark each; how many
        this worker claimed."""
        async with self._slots:
            now = self._now()
            lease = int(self.lease * 1000)
            owed = [o for o in [await storage.claim(i, now, lease) for i in ids] if o is not None]
            if not owed:
                return 0
            owed.sort(key=lambda o: (o.trigger["ts"], o.trigger["id"]))  # a digest reads in order
            first = owed[0]
            channel = self.channels.get(first.channel["kind"])
            if len(owed) > 1 and isinstance(channel, Digesting):
                outcome = await self._send(first, lambda target: channel.send_digest(
                    [message_of(o.trigger) for o in owed], target))
                self.digests += 1
                self.digested += len(owed)
                outcomes = [(o, outcome) for o in owed]
            else:
                outcomes = [(o, await self._send(o, self._single(o))) for o in owed]
            await self._mark(outcomes)
            return len(owed)

    def _single(self, owed: storage.Owed) -> Callable[[Target], Awaitable[Outcome]]:
        def send(target: Target) -> Awaitable[Outcome]:
            return self.channels[owed.channel["kind"]].send(message_of(owed.trigger), target)
        return send

    async def _send(self, owed: storage.Owed,
                    send: Callable[[Target], Awaitable[Outcome]]) -> Outcome:
        """One send to ``owed``'s channel row, whatever it raises an outcome."""
        kind = owed.channel["kind"]
        if kind not in self.channels:
            return Outcome("retry", f"no channel of kind {kind!r} here")
        if owed.channel["state"] != "active":
            return Outcome("failed", f"channel {owed.channel['state']}: "
                           f"{owed.channel['reason']}")
        target = Target(owed.channel["id"], kind, owed.channel["target"],
                        owed.channel["secret"])
        try:
            outcome: Outcome = await send(target)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a plugin's bug is this delivery's, not the worker's
            log.exception("alerts: channel %r failed", kind)
            outcome = Outcome("retry", f"channel error: {error.__class__.__name__}")
        return outcome

    async def _mark(self, outcomes: Sequence[tuple[storage.Owed, Outcome]]) -> None:
        now = self._now()
        states: dict[int, Step] = {}
        for owed, outcome in outcomes:
            attempts = owed.attempts + (outcome.status != "later")
            step = next_step(outcome, attempts, now, self.rng())
            await storage.mark(owed.id, status=step.status, attempts=attempts, due=step.due,
                               error=step.error, sent_at=now if step.status == "sent" else None)
            if step.channel_state is not None:
                states[owed.channel["id"]] = step
            if step.status == "sent":
                self.sent += 1
        for channel_id, step in states.items():
            assert step.channel_state is not None
            await storage.set_channel_state(channel_id, step.channel_state, step.error)
        if any(o.status in ("retry", "later") for _, o in outcomes):
            self.wake()  # the poll waits for the retry's due (a stream entry is acknowledged)
        self.marked.set()
