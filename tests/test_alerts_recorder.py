"""The recorder on the collector: each published batch evaluated once, its triggers written
under the publication's term, in order, again after a failure, never past the fence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tortoise.context import TortoiseContext

from quartsig.alerts import storage
from quartsig.alerts.evaluation import Trigger
from quartsig.alerts.recorder import Recorder
from quartsig.alerts.storage import AlertDelivery, AlertTrigger
from quartsig.cluster.memory import MemoryBroker
from quartsig.domain.model import Batch, Key, Row, ScanRequest, ScanResult
from quartsig.domain.symbols import screener_for
from quartsig.fanout.handler import HubHandler
from quartsig.fanout.hub import Hub
from quartsig.feed.collector import Collector, CollectorSettings
from quartsig.plugins.builtins.summary import PROFILE as SUMMARY
from tests.support.alertsdb import alerts_database

OWNER = 2002
KEY = Key("summary", "FX_IDC:EURUSD", "1h")
SPEC: dict[str, Any] = {"keys": [list(KEY)], "condition": {"kind": "label", "to": ["BUY"]}}
WAIT = 30.0  # generous: a busy machine


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[TortoiseContext]:
    async with alerts_database(tmp_path, OWNER) as context:
        yield context


@pytest.fixture
async def recorder(db: TortoiseContext) -> AsyncIterator[Recorder]:
    await storage.create_rule(OWNER, SPEC, limit=10)
    await storage.add_channel(OWNER, "telegram", str(OWNER))
    recorder = Recorder(reload=3600)
    await recorder.start()
    try:
        yield recorder
    finally:
        await recorder.stop()


def _batch(rating: float, ts: int, term: int = 0) -> Batch:
    return Batch(values=[(KEY, SUMMARY.compute({"Recommend.All": rating}), ts)], term=term)


async def _settled(recorder: Recorder) -> None:
    await asyncio.sleep(0)
    async with asyncio.timeout(WAIT):
        await recorder.idle.wait()


async def test_a_published_change_is_written_with_its_term(recorder: Recorder) -> None:
    recorder.on_published(_batch(0.0, 1_000), term=4)
    recorder.on_published(_batch(0.3, 2_000), term=4)
    recorder.on_published(_batch(0.3, 3_000), term=4)  # unchanged: nothing
    await _settled(recorder)
    rows = await AlertTrigger.all().values("before", "after", "term", "ts")
    assert rows == [{"before": "NEUTRAL", "after": "BUY", "term": 4, "ts": 2_000}]
    assert await AlertDelivery.all().count() == 1 and recorder.written == 1


async def test_a_lower_term_is_dropped_not_retried(recorder: Recorder) -> None:
    await storage.write_triggers([], term=9)  # a newer leader has written
    recorder.on_published(_batch(0.0, 1_000), term=8)
    recorder.on_published(_batch(0.3, 2_000), term=8)
    await _settled(recorder)
    assert await AlertTrigger.all().count() == 0 and recorder.fenced == 1


async def test_a_failed_write_is_tried_again_in_order(db: TortoiseContext) -> None:
    await storage.create_rule(OWNER, {**SPEC, "condition": {"kind": "label"}}, limit=10)
    calls: list[list[str]] = []
    failures = iter([RuntimeError("database away"), RuntimeError("still away")])

    async def flaky(triggers: Sequence[Trigger], term: int, **options: Any) -> None:
        calls.append([t.after for t in triggers])
        error = next(failures, None)
        if error is not None:
            raise error
        await storage.write_triggers(triggers, term, **options)

    recorder = Recorder(reload=3600, write=flaky)
    await recorder.start()
    try:
        for i, rating in enumerate([0.0, 0.3, -0.3]):
            recorder.on_published(_batch(rating, 1_000 * (i + 1)), term=1)
        await _settled(recorder)
    finally:
        await recorder.stop()
    # both publications queued before the writer ran: one transaction, tried three times
    assert calls == [["BUY", "SELL"]] * 3
    assert await AlertTrigger.all().order_by("id").values_list("after", flat=True) == [
        "BUY", "SELL"]


async def test_queued_publications_keep_their_values_when_the_profile_updates_in_place(
        db: TortoiseContext) -> None:
    """``full`` updates a key's data dict in place each tick. Publications queued while the
    database is away are evaluated later: each must be evaluated with its own values, not the
    dict as the latest tick left it, or the transitions between them go unseen."""
    await storage.create_rule(OWNER, {**SPEC, "condition": {"kind": "label"}}, limit=10)
    away, writing = asyncio.Event(), asyncio.Event()

    async def slow(triggers: Sequence[Trigger], term: int, **options: Any) -> None:
        writing.set()
        await away.wait()
        await storage.write_triggers(triggers, term, **options)

    recorder = Recorder(reload=3600, write=slow)
    await recorder.start()
    try:
        data = dict(SUMMARY.compute({"Recommend.All": 0.0}))
        recorder.on_published(Batch(values=[(KEY, data, 1_000)]), term=1)
        async with asyncio.timeout(WAIT):  # the writer took the first one, waits on the db
            await writing.wait()
        for i, rating in enumerate([0.3, -0.3], 2):
            data.update(SUMMARY.compute({"Recommend.All": rating}))  # the same dict, updated
            recorder.on_published(Batch(values=[(KEY, data, 1_000 * i)]), term=1)
        away.set()
        await _settled(recorder)
    finally:
        await recorder.stop()
    assert await AlertTrigger.all().order_by("id").values_list("before", "after") == [
        ("NEUTRAL", "BUY"), ("BUY", "SELL")]


async def test_rules_changed_elsewhere_are_reloaded(recorder: Recorder) -> None:
    assert len(recorder.evaluator) == 1
    await storage.create_rule(OWNER, SPEC, limit=10)  # as another node would
    recorder.loaded.clear()
    recorder.rules_changed()
    async with asyncio.timeout(WAIT):
        await recorder.loaded.wait()
    assert len(recorder.evaluator) == 2


class _Scanner:
    """The scanner client's one method the collector calls, answering from ``ratings``."""

    def __init__(self) -> None:
        self.rating = 0.0

    async def scan_all(self, requests: list[ScanRequest], **options: Any) -> list[ScanResult]:
        return [ScanResult(r, {t: Row.of({c: self.rating for c in r.columns})
                               for t in r.tickers}, frozenset(), None, 1, 0.0)
                for r in requests]


class _FencedBroker(MemoryBroker):
    async def publish(self, batch: Batch) -> bool:
        return False


def _collector(broker: MemoryBroker, scanner: _Scanner) -> Collector:
    return Collector(broker, {"summary": SUMMARY}, scanner,  # type: ignore[arg-type]
                     screener_for)


async def test_the_collector_hands_each_published_batch_to_the_recorder(
        recorder: Recorder) -> None:
    hub = Hub()
    scanner = _Scanner()
    col = _collector(MemoryBroker(HubHandler(hub)), scanner)
    col.on_published = recorder.on_published
    await col.tick({KEY})
    scanner.rating = 0.3
    await col.tick({KEY})
    await _settled(recorder)
    assert await AlertTrigger.all().values_list("after", flat=True) == ["BUY"]


async def test_a_fenced_publication_is_not_evaluated() -> None:
    hub = Hub()
    seen: list[tuple[Batch, int]] = []
    col = _collector(_FencedBroker(HubHandler(hub)), _Scanner())
    col.on_published = lambda batch, term: seen.append((batch, term))
    await col.tick({KEY})
    assert seen == []
    col = _collector(MemoryBroker(HubHandler(hub)), _Scanner())
    col.on_published = lambda batch, term: seen.append((batch, term))
    await col.tick({KEY})
    assert [(len(batch.values), term) for batch, term in seen] == [(1, 0)]


class _Recording(_Scanner):
    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()
        self.answered = asyncio.Event()

    async def scan_all(self, requests: list[ScanRequest], **options: Any) -> list[ScanResult]:
        self.asked |= {t for r in requests for t in r.tickers}
        self.answered.set()
        return await super().scan_all(requests, **options)


async def test_the_rules_keys_are_collected_with_no_board_open(recorder: Recorder) -> None:
    hub = Hub()  # nobody subscribes to anything
    scanner = _Recording()
    col = Collector(MemoryBroker(HubHandler(hub)), {"summary": SUMMARY}, scanner,  # type: ignore[arg-type]
                    screener_for, CollectorSettings(interval=3600))
    col.standing = recorder.standing
    task = asyncio.create_task(col.run())
    try:
        async with asyncio.timeout(WAIT):
            await scanner.answered.wait()
    finally:
        col.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert scanner.asked == {KEY.symbol}


async def test_a_change_the_dead_leader_published_but_did_not_record_is_recorded_next(
        db: TortoiseContext) -> None:
    await storage.create_rule(OWNER, {**SPEC, "condition": {"kind": "label"}}, limit=10)
    old = Recorder(reload=3600)
    await old.start()
    old.on_published(_batch(0.0, 1_000), term=1)
    old.on_published(_batch(0.3, 2_000), term=1)
    await _settled(old)
    old.on_published(_batch(-0.3, 3_000), term=1)  # published, then the leader dies...
    await old.stop()  # ...before its writer could record it
    new = Recorder(reload=3600)
    await new.start()
    try:
        new.on_published(_batch(-0.3, 4_000), term=2)  # the next leader's first publication
        new.on_published(_batch(0.3, 5_000), term=2)
        await _settled(new)
    finally:
        await new.stop()
    rows = await AlertTrigger.all().order_by("id").values_list("before", "after", "term")
    assert rows == [("NEUTRAL", "BUY", 1), ("BUY", "SELL", 2), ("SELL", "BUY", 2)]


async def test_a_restarted_leader_with_nothing_missed_fires_nothing_new(
        db: TortoiseContext) -> None:
    await storage.create_rule(OWNER, {**SPEC, "condition": {"kind": "label"}}, limit=10)
    for term, ratings in ((1, [0.0, 0.3]), (2, [0.3])):
        recorder = Recorder(reload=3600)
        await recorder.start()
        try:
            for i, rating in enumerate(ratings):
                recorder.on_published(_batch(rating, 1_000 * (i + 1) + term), term=term)
            await _settled(recorder)
        finally:
            await recorder.stop()
    assert await AlertTrigger.all().values_list("after", flat=True) == ["BUY"]
