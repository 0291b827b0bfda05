"""The collector: every ``interval`` seconds, demand -> plan -> fetch -> compute -> publish.

Only the fetch awaits. Taking the demand and publishing the results are each one
synchronous step, so connections change the hub between steps, never inside one.
A key nobody had before does not wait for the next tick: new keys are batched for
``batch_delay`` seconds into an early fetch of just those keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from .hub import Hub
from .model import Key, Row, ScanRequest, ScanResult
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
        hub: Hub,
        profiles: Mapping[str, Profile],
        client: ScannerClient,
        screener_of: Callable[[str], str],
        *,
        interval: float = 20.0,
        limits: Limits | None = None,
        batch_delay: float = 0.5,
        on_unknown: Callable[[str], None] | None = None,
        metrics: Any = None,
        batch: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self.hub = hub
        self.profiles = profiles
        self.client = client
        self.screener_of = screener_of
        self.interval = interval
        self.limits = limits or Limits()
        self.batch_delay = batch_delay
        self.on_unknown = on_unknown
        self.metrics = metrics
        #: Wraps each publish step, so that its frames go out together (connection.Outbox).
        self.batch = batch
        self.ticks = 0
        self._columns = {name: tuple(profile.columns) for name, profile in profiles.items()}
        self._pairs: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._fresh = asyncio.Event()
        hub.on_fresh(self._fresh.set)

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until cancelled. Nothing a tick meets escapes this loop but cancellation."""
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_tick:
                await self._guarded(self.hub.demand())
                next_tick = max(next_tick + self.interval, time.monotonic() + self.interval / 10)
                self.hub.sweep()
                continue
            try:
                async with asyncio.timeout(next_tick - now):
                    await self._fresh.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(self.batch_delay)  # gather the other new keys of this burst
            self._fresh.clear()
            if next_tick - time.monotonic() > self.batch_delay and self.hub.fresh:
                await self._guarded(set(self.hub.fresh))

    async def _guarded(self, keys: set[Key]) -> None:
        try:
            await self.tick(keys)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in a plugin or here must not stop the server's data
            log.exception("collector tick failed")
            self.hub.set_status("degraded", "internal error in the collector")

    # -- one tick -----------------------------------------------------------------------

    def plan(self, keys: Iterable[Key]) -> list[ScanRequest]:
        return plan(keys, self._columns, self.screener_of, self.limits)

    async def tick(self, keys: set[Key]) -> int:
        """Fetch ``keys`` and publish what changed; returns how many keys changed."""
        if not keys:
            self.hub.set_status("ok")
            return 0
        started = time.monotonic()
        requests = self.plan(keys)
        results = await self.client.scan_all(requests, deadline=started + self.interval * 0.9)
        with self.batch():
            changed = self.publish(keys, results)
        if self.metrics is not None:
            self.metrics.tick.observe(time.monotonic() - started)
        self.ticks += 1
        return changed

    def publish(self, keys: Iterable[Key], results: list[ScanResult]) -> int:
        """Synchronous: compute each key's data and hand changes to the hub."""
        started = time.perf_counter()
        ts = int(time.time() * 1000)
        outcome = merge_results(results)
        self._count(results)
        changed = 0
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
            if self.hub.unchanged(key, values):
                continue  # same inputs as last time: same data, nothing to compute or send
            profile = self.profiles[key.profile]
            if profile.compute_values is not None:
                data = profile.compute_values(values)
            else:
                data = profile.compute(dict(zip(bases, values, strict=True)))
            changed += self.hub.publish(key, data, ts, values)
        for symbol, symbol_keys in rejected.items():
            message = f"TradingView has no symbol {symbol}"
            if self.on_unknown is not None:
                self.on_unknown(symbol)
            for key in symbol_keys:
                self.hub.reject(key, ErrorCode.UNKNOWN_SYMBOL, message)
        self._report(results, outcome)
        if self.metrics is not None:
            self.metrics.fanout.observe(time.perf_counter() - started)
        return changed

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

    def _report(self, results: list[ScanResult], outcome: Outcome) -> None:
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
        self.hub.set_status(upstream, reason)
