"""The collector: every ``interval`` seconds, demand -> plan -> fetch -> compute -> publish.

It runs only while its broker says this node leads (always, standalone), reads demand from the
broker and publishes each tick's outcome to it as one :class:`~quartsig.model.Batch`; it never
touches a hub, so the same loop serves one process or a cluster. A key nobody had before does not
wait for the next tick: new keys are gathered for ``batch_delay`` seconds into an early fetch of
just those keys.

Computing is pure (:meth:`Collector.compose`): rows in, a batch out, with the inputs each key's
data came from remembered so that an unchanged row costs neither a compute nor a publication.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .broker import Broker
from .model import Batch, Key, Row, ScanRequest, ScanResult
from .planner import Limits, plan
from .profiles import Profile
from .protocol import ErrorCode
from .scanner import ScannerClient, summarise
from .timeframes import column

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Outcome:
    """What one fetch brought back, merged per ticker (a ticker may span several requests)."""

    rows: dict[str, Row] = field(default_factory=dict)
    incomplete: set[str] = field(default_factory=set)  # tickers in a failed request
    unknown: set[str] = field(default_factory=set)  # tickers TradingView does not have
    bad_columns: set[str] = field(default_factory=set)


def merge_results(results: Iterable[ScanResult]) -> Outcome:
    outcome = Outcome()
    missing: set[str] = set()
    for result in results:
        if result.ok:
            for ticker, row in result.rows.items():
                known = outcome.rows.get(ticker)
                outcome.rows[ticker] = row if known is None else known.merged(row)
            missing.update(result.missing)
        else:
            outcome.incomplete.update(result.request.tickers)
            if result.error is not None and result.error.column:
                outcome.bad_columns.add(result.error.column)
    outcome.unknown = missing - outcome.rows.keys() - outcome.incomplete
    return outcome


class Collector:
    def __init__(
        self,
        broker: Broker,
        profiles: Mapping[str, Profile],
        client: ScannerClient,
        screener_of: Callable[[str], str],
        *,
        interval: float = 20.0,
        limits: Limits | None = None,
        batch_delay: float = 0.5,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.profiles = profiles
        self.client = client
        self.screener_of = screener_of
        self.interval = interval
        self.limits = limits or Limits()
        self.batch_delay = batch_delay
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.ticks = 0
        #: Set after every tick, full or early: tests and tools wait on it instead of sleeping.
        self.ticked = asyncio.Event()
        self._columns = {name: tuple(profile.columns) for name, profile in profiles.items()}
        self._pairs: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        #: The inputs each key's data was last computed from: an unchanged row is skipped.
        self._sources: dict[Key, tuple[Any, ...]] = {}
        #: Keys asked for by a newcomer and not published since: published even if unchanged
        #: (the newcomer's node has nothing for them, whatever this collector last computed).
        self._owed: set[Key] = set()

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Collect whenever this node leads, until cancelled."""
        while True:
            await self.broker.leadership()
            self._sources.clear()  # a new term: what others published meanwhile is unknown
            await self._lead()

    async def _lead(self) -> None:
        """Tick while leading. Nothing a tick meets escapes this loop but cancellation."""
        next_tick = self.clock()
        while self.broker.leading():
            now = self.clock()
            if now >= next_tick:
                await self._guarded(await self.broker.demand(), full=True)
                next_tick = max(next_tick + self.interval, self.clock() + self.interval / 10)
                continue
            try:
                async with asyncio.timeout(next_tick - now):
                    await self.broker.wanted()
            except TimeoutError:
                continue
            await asyncio.sleep(self.batch_delay)  # gather the other new keys of this burst
            fresh = self.broker.wanted_now()
            if fresh and next_tick - self.clock() > self.batch_delay:
                await self._guarded(fresh)
            else:
                self._owed |= fresh  # the next full tick publishes them, changed or not

    async def _guarded(self, keys: set[Key], *, full: bool = False) -> None:
        try:
            await self.tick(keys, full=full)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not stop the server's data
            log.exception("collector tick failed")
            await self.broker.publish(
                Batch(status=("degraded", "internal error in the collector"))
            )
        finally:
            self.ticked.set()

    # -- one tick -----------------------------------------------------------------------

    def plan(self, keys: Iterable[Key]) -> list[ScanRequest]:
        return plan(keys, self._columns, self.screener_of, self.limits)

    async def tick(self, keys: set[Key], *, full: bool = False) -> int:
        """Fetch ``keys`` and publish what changed; returns how many keys' data changed.

        ``full``: ``keys`` is the whole demand, so what is not in it is forgotten."""
        if full:
            self._forget_all_but(keys)
        else:
            self._owed |= keys
        if not keys:
            await self.broker.publish(Batch(status=("ok", "")))
            self.ticks += 1
            return 0
        started = self.clock()
        requests = self.plan(keys)
        results = await self.client.scan_all(requests, deadline=started + self.interval * 0.9)
        batch = self.compose(keys, results)
        if await self.broker.publish(batch):
            self._owed.difference_update(key for key, _, _ in batch.values)
        else:
            self._sources.clear()  # fenced: nothing of it reached anyone
        if self.metrics is not None:
            self.metrics.tick.observe(self.clock() - started)
        self.ticks += 1
        return len(batch.values)

    def compose(self, keys: Iterable[Key], results: list[ScanResult]) -> Batch:
        """Synchronous and pure but for the remembered sources: rows in, one batch out."""
        ts = int(self.wall() * 1000)
        outcome = merge_results(results)
        self._count(results)
        batch = Batch(term=self.broker.term)
        rejected: dict[str, list[Key]] = {}
        for key in keys:
            row = outcome.rows.get(key.symbol)
            if row is None:
                if key.symbol in outcome.unknown:
                    rejected.setdefault(key.symbol, []).append(key)
                continue
            bases, columns = self._columns_for(key.profile, key.tf)
            if key.symbol in outcome.incomplete and any(col not in row for col in columns):
                continue  # part of its columns failed: keep the last good data
            values = row.pick(columns)
            if self._sources.get(key) == values and key not in self._owed:
                continue  # same inputs as last time: same data, nothing to compute or send
            profile = self.profiles[key.profile]
            if profile.compute_values is not None:
                data = profile.compute_values(values)
            else:
                data = profile.compute(dict(zip(bases, values, strict=True)))
            self._sources[key] = values
            batch.values.append((key, data, ts))
        for symbol, symbol_keys in rejected.items():
            message = f"TradingView has no symbol {symbol}"
            for key in symbol_keys:
                self._sources.pop(key, None)
                self._owed.discard(key)
                batch.rejected.append((key, str(ErrorCode.UNKNOWN_SYMBOL), message))
        batch.status = self._report(results, outcome)
        return batch

    def _forget_all_but(self, demand: set[Key]) -> None:
        """Drop what this collector remembers of keys nobody watches any more."""
        for key in [key for key in self._sources if key not in demand]:
            del self._sources[key]
        self._owed &= demand

    def _columns_for(self, profile: str, tf: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The profile's base names and their scanner columns on ``tf``, built once."""
        found = self._pairs.get((profile, tf))
        if found is None:
            bases = self._columns[profile]
            found = self._pairs[(profile, tf)] = (bases, tuple(column(b, tf) for b in bases))
        return found

    def _count(self, results: list[ScanResult]) -> None:
        if self.metrics is None:
            return
        for result in results:
            outcome = "ok" if result.ok else (result.error.kind if result.error else "error")
            self.metrics.upstream.labels(outcome=outcome).inc()
            self.metrics.cells.inc(result.request.cells)

    def _report(self, results: list[ScanResult], outcome: Outcome) -> tuple[str, str]:
        upstream, reason = summarise(results)
        if outcome.bad_columns:
            names = ", ".join(sorted(outcome.bad_columns))
            owners = ", ".join(
                sorted(
                    name
                    for name, columns in self._columns.items()
                    if any(col.partition("|")[0] in columns for col in outcome.bad_columns)
                )
            )
            log.error("TradingView rejected column(s) %s (profile %s)", names, owners or "?")
            reason = f"TradingView rejected column(s) {names} (profile {owners or '?'})"
        elif upstream != "ok":
            log.warning("upstream %s: %s", upstream, reason)
        return upstream, reason
