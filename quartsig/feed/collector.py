"""The collector: every ``interval`` seconds, demand -> plan -> fetch -> compute -> publish.

It runs only while its broker says this node leads (always, standalone), reads demand from the
broker and publishes each tick's outcome to it as one
:class:`~quartsig.domain.model.Batch`; it never touches a hub, so the same loop serves one
process or a cluster. A key nobody had before does not wait for the next tick: it goes
upstream in an *early fetch* of just the new keys, scheduled by
:class:`~quartsig.feed.earlyfetch.EarlyFetches` (a lone key at once, a burst gathered for a
few tens of ms), beside any tick or other early fetch in flight. Early fetches draw on a
:class:`~quartsig.feed.budget.RequestBudget`; a key beyond it waits for the next full tick and its
subscribers are told so (a ``deferred`` notice). Symbols TradingView said it does not have are
remembered, so asking for them again costs nothing upstream.

When every request of a tick is throttled, the collector backs off across ticks
(:class:`~quartsig.feed.budget.Backoff`: exponential, jittered, ``Retry-After`` honoured,
capped): it sends one probe request per step, no early fetch, and tells clients when the next try is
(``retry_at`` in the ``status`` frame).

What a tick's rows become, and which profile a plugin's failure is charged to, is the
:class:`~quartsig.feed.composer.Composer`'s business; the collector fetches again, in the same tick,
a request TradingView refused over a column, once the composer has quarantined it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quartsig.cluster.broker import Broker
from quartsig.config import UNKNOWN_SYMBOL_TTL, Settings
from quartsig.domain.expiring import Expiring
from quartsig.domain.model import Batch, Key, ScanRequest, ScanResult
from quartsig.domain.protocol import ErrorCode
from quartsig.feed.budget import Backoff, RequestBudget
from quartsig.feed.clock import LoopClock
from quartsig.feed.composer import REFETCH_ROUNDS, Composer, is_refused
from quartsig.feed.earlyfetch import EarlyFetches
from quartsig.plugins.guard import COMPUTE_BUDGET, QUARANTINE
from quartsig.plugins.profiles import Profile
from quartsig.upstream.planner import Limits, plan
from quartsig.upstream.scanner import ScannerClient

log = logging.getLogger(__name__)

#: Scanner error kinds that mean "this address is being throttled or blocked".
THROTTLED = frozenset({"throttled", "blocked"})


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """How the collector paces itself and how much it forgives a plugin: one object, so the
    app's settings reach it by name (their defaults are in :mod:`quartsig.config`)."""

    #: Seconds between full ticks.
    interval: float = Settings.interval  # the defaults live in config, once
    #: How the planner may cut requests.
    limits: Limits = field(default_factory=Limits)
    #: Seconds a burst of new keys is gathered into one early fetch.
    batch_delay: float = 0.03
    #: Longest back-off step while upstream throttles us, in seconds.
    backoff_max: float = Settings.backoff_max
    #: Seconds a refused column stays quarantined.
    quarantine: float = QUARANTINE
    #: CPU seconds a plugin's compute may take for one key.
    compute_budget: float = COMPUTE_BUDGET

    def __post_init__(self) -> None:
        for name in ("interval", "batch_delay", "backoff_max", "quarantine", "compute_budget"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"collector setting {name} must be a positive number, "
                                 f"not {value!r}")


class Collector:
    def __init__(
        self,
        broker: Broker,
        profiles: Mapping[str, Profile],
        client: ScannerClient,
        screener_of: Callable[[str], str],
        settings: CollectorSettings | None = None,
        *,
        budget: RequestBudget | None = None,
        backoff: Backoff | None = None,
        metrics: Any = None,
        clock: LoopClock | None = None,
        composer: Composer | None = None,
    ) -> None:
        """``composer``: what rows become, built outside when a caller needs its own (a test's
        CPU clock); by default one from ``profiles`` and ``settings``."""
        settings = settings or CollectorSettings()
        clock = clock or LoopClock()
        self.settings = settings
        self.broker = broker
        self.profiles = profiles
        self.client = client
        self.screener_of = screener_of
        self.interval = settings.interval
        self.limits = settings.limits
        self.batch_delay = settings.batch_delay
        self.metrics = metrics
        self.loop_clock = clock
        self.clock = clock.monotonic
        self.wall = clock.wall
        self.ticks = 0
        #: The schedule of early fetches (``batch_delay``: how long a burst is gathered).
        self.early = EarlyFetches(window=self.batch_delay,
                                  max_window=max(0.25, self.batch_delay), clock=self.clock)
        #: Upstream requests early fetches may make; None: no limit.
        self.budget = budget
        #: Consecutive throttled attempts push the next one back.
        self.backoff = backoff or Backoff(self.interval, settings.backoff_max, clock=self.clock)
        self._backoff_stepped = -float("inf")
        self._next_tick = self.clock()
        self._fetches: set[asyncio.Task[None]] = set()
        #: Symbols TradingView does not have; the app hands over its state's (one cache).
        self.unknown_symbols: Expiring[str, str] = Expiring(UNKNOWN_SYMBOL_TTL,
                                                            clock=self.clock)
        #: Set after every tick, full or early: tests and tools wait on it instead of sleeping.
        self.ticked = asyncio.Event()
        #: Set by :meth:`stop`.
        self.stopping = False
        #: Called with each batch this node published and its term (alerts are evaluated there).
        self.on_published: Callable[[Batch, int], None] | None = None
        #: Keys collected even when nobody watches them (the keys of the alert rules).
        self.standing: Callable[[], set[Key]] | None = None
        #: What rows become, and which profile each failure is charged to.
        self.composer = composer or Composer(
            broker, profiles, screener_of, metrics=metrics, clock=self.clock, wall=self.wall,
            quarantine=settings.quarantine, compute_budget=settings.compute_budget,
        )

    # -- the loop ------------------------------------------------------------------------

    def stop(self) -> None:
        """Make the loops end at their next turn, even if a cancellation is lost on the way.

        redis-py can swallow a task's cancellation that lands inside a command (redis-py
        issues #2028, #2551): the command then returns and the loop would carry on. The flag
        ends it at the next turn; the owner still cancels, and waits a bounded time."""
        self.stopping = True

    async def run(self) -> None:
        """Collect whenever this node leads, until cancelled or stopped."""
        while not self.stopping:
            await self.broker.leadership()
            self.composer.forget()  # a new term: what others published meanwhile is unknown
            await self._lead()

    async def _lead(self) -> None:
        """Tick while leading; early fetches run beside the ticks, in their own tasks."""
        gathering = asyncio.create_task(self._gather(), name="quartsig-early-fetches")
        try:
            await self._tick_loop()
        finally:
            gathering.cancel()
            for task in list(self._fetches):
                task.cancel()
            await asyncio.gather(gathering, *self._fetches, return_exceptions=True)
            self._fetches.clear()
            self.early.reset()

    async def _tick_loop(self) -> None:
        """Full ticks every ``interval`` (one probe per step while throttled). Nothing a tick
        meets escapes this loop but cancellation."""
        self._next_tick = self.clock()
        while self.broker.leading() and not self.stopping:
            now = self.clock()
            wake = max(self._next_tick, self.backoff.until)
            if now < wake:
                # Leadership is checked often; the loop clock's sleep, so a test's time drives it.
                await self.loop_clock.sleep(min(wake - now, self.interval))
                continue
            probe = self.backoff.active()
            demand = await self.broker.demand()
            if self.standing is not None:
                demand = demand | self.standing()
            self.early.tick_starting(demand - self.early.in_flight)
            try:
                await self._guarded(demand, full=True, probe=probe)
            finally:
                self.early.tick_done()
            if probe and not self.backoff.active():
                self._next_tick = self.clock()  # the probe went through: everything, now
            else:
                self._next_tick = max(self._next_tick + self.interval,
                                      self.clock() + self.interval / 10)

    async def _gather(self) -> None:
        """Wait for keys nobody had and launch early fetches of them as they fall due."""
        early = self.early
        while not self.stopping:
            due = early.due()
            now = self.clock()
            if due is None or due > now:
                try:
                    async with asyncio.timeout(None if due is None else due - now):
                        await self.broker.wanted()
                    keys = self.broker.wanted_now()  # takes them (Redis: consumed)
                except TimeoutError:
                    continue
                except Exception:  # the broker's trouble: the full ticks still serve every key
                    log.exception("waiting for new keys failed")
                    await self.loop_clock.sleep(1.0)
                    continue
                early.add(keys)
                continue
            if not self.broker.leading():
                return
            keys = early.take()
            task = asyncio.create_task(self._early_fetch(keys))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)
            if self.metrics is not None:
                self.metrics.early_fetches.inc()

    async def _early_fetch(self, keys: set[Key]) -> None:
        served: set[Key] = set()
        try:
            served = await self._fetch_early(keys)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not stop the server's data
            log.exception("early fetch failed")
            await self.broker.publish(
                Batch(status=("degraded", "internal error in the collector"))
            )
        finally:
            self.early.finish(keys, served)
            self.ticked.set()

    async def _fetch_early(self, keys: set[Key]) -> set[Key]:
        """Fetch new ``keys`` within the budget; returns those served (data or rejection)."""
        notes = Batch(term=self.broker.term)
        for key in keys:
            message = self.unknown_symbols.get(key.symbol)
            if message is not None:  # remembered: no request
                notes.rejected.append((key, str(ErrorCode.UNKNOWN_SYMBOL), message))
        served = {key for key, _, _ in notes.rejected}
        rest = keys - served
        requests: list[ScanRequest] = []
        if rest and self.backoff.active():
            self._defer(notes, rest, "throttled", "TradingView is throttling us: this key's "
                        "first data comes with the next try", self.backoff.until)
            rest = set()
        if rest:
            requests = self.plan(rest)
            if self.budget is not None:
                granted = self.budget.grant(len(requests))
                if granted < len(requests):
                    inside = {t for request in requests[:granted] for t in request.tickers}
                    outside = {t for request in requests[granted:] for t in request.tickers}
                    admitted = {k for k in rest if k.symbol in inside and k.symbol not in outside}
                    self._defer(notes, rest - admitted, "budget", "the early-fetch budget is "
                                "spent: this key's first data comes with the next tick",
                                self._next_tick)
                    requests, rest = requests[:granted], admitted
        if notes:
            await self.broker.publish(notes)
        if rest and requests:
            batch = await self._tick(rest, requests=requests)
            served |= {key for key, _, _ in batch.values}
            served |= {key for key, _, _ in batch.rejected}
        return served

    def _defer(self, notes: Batch, keys: set[Key], why: str, message: str, at: float) -> None:
        """Tell ``keys``' subscribers their first data waits until ``at`` (``clock``)."""
        when = self._wall_ms(at)
        notes.deferred.extend((key, message, when) for key in keys)
        self.composer.owed |= keys  # the next full tick publishes them, changed or not
        if self.metrics is not None:
            self.metrics.early_deferred.labels(reason=why).inc(len(keys))

    def _upstream(self, deadline: float) -> float:
        """``deadline`` (loop clock) as the scanner client reads it (``time.monotonic``): the
        client waits on the network in real time, whatever clock drives the loop."""
        return time.monotonic() + (deadline - self.clock())

    def _wall_ms(self, instant: float) -> int:
        return int((self.wall() + max(0.0, instant - self.clock())) * 1000)

    async def _guarded(self, keys: set[Key], *, full: bool = False, probe: bool = False) -> None:
        try:
            await self.tick(keys, full=full, probe=probe)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not stop the server's data
            log.exception("collector tick failed")
            await self.broker.publish(
                Batch(status=("degraded", "internal error in the collector"))
            )
        finally:
            self.ticked.set()

    def _throttle_check(self, results: list[ScanResult], started: float) -> None:
        """Back off when every request of a fetch was throttled; stop when one got through."""
        if not results:
            return
        if any(result.ok for result in results):
            if self.backoff.active():
                log.warning("upstream answers again after %d throttled step(s)",
                            self.backoff.steps)
            self.backoff.succeeded()
            return
        errors = [result.error for result in results if result.error is not None]
        if not any(error.kind in THROTTLED for error in errors):
            return
        if started < self._backoff_stepped:
            return  # a fetch that started earlier already took this step
        hints = [error.retry_after for error in errors if error.retry_after is not None]
        until = self.backoff.failed(max(hints) if hints else None)
        self._backoff_stepped = self.clock()
        if self.metrics is not None:
            self.metrics.backoffs.inc()
        log.warning("upstream throttled %d time(s) in a row: next try in %.1fs (one probe)",
                    self.backoff.steps, until - self.clock())

    # -- one tick -----------------------------------------------------------------------

    def plan(self, keys: Iterable[Key]) -> list[ScanRequest]:
        """The requests for ``keys``, without quarantined columns or disabled profiles."""
        columns = self.composer.quarantine.active()
        return plan(
            (key for key in keys if key.profile in columns), columns, self.screener_of, self.limits
        )

    async def tick(self, keys: set[Key], *, full: bool = False, probe: bool = False) -> int:
        """Fetch ``keys`` and publish what changed; returns how many keys' data changed.

        ``full``: ``keys`` is the whole demand, so what is not in it is forgotten, and keys an
        early fetch has in flight are left to it. ``probe``: send only the first request, once
        (backing off from throttling)."""
        batch = await self._tick(keys, full=full, probe=probe)
        return len(batch.values)

    async def _tick(
        self,
        keys: set[Key],
        *,
        full: bool = False,
        probe: bool = False,
        requests: list[ScanRequest] | None = None,
    ) -> Batch:
        if full:
            # Keys of an early fetch in flight are fetched again rather than left to it: a
            # fetch stuck in retries must not keep a card empty for ticks (a browser test saw
            # it on a loaded machine), and the duplicate costs cells, not a request.
            self.composer.forget_all_but(keys)
        else:
            self.composer.owed |= keys
        if not keys:
            batch = Batch(status=("ok", ""))
            await self.broker.publish(batch)
            self.ticks += 1
            return batch
        started = self.clock()
        deadline = started + self.interval * 0.9
        self.composer.lift()
        if requests is None:
            requests = self.plan(keys)
        if probe:
            requests = requests[:1]
        if probe:  # one attempt: a probe must not knock again
            results = await self.client.scan_all(requests, deadline=self._upstream(deadline),
                                                 retry=False)
        else:
            results = await self.client.scan_all(requests, deadline=self._upstream(deadline))
        self._throttle_check(results, started)
        if not probe and not _throttled(results):  # after a 429, nothing more this tick
            results = await self._refetch(keys, results, deadline)
        batch = self.composer.compose(keys, results)
        for key, code, message in batch.rejected:
            if code == ErrorCode.UNKNOWN_SYMBOL:
                self.unknown_symbols.add(key.symbol, message)
        if batch.status is not None and self.backoff.active():
            batch.retry_at = self._wall_ms(self.backoff.until)
        if await self.broker.publish(batch):
            if self.on_published is not None:
                self.on_published(batch, self.broker.term)
            owed = self.composer.owed
            owed.difference_update(key for key, _, _ in batch.values)
            owed.difference_update(key for key, _, _ in batch.failed)  # told, nothing owed
        else:
            self.composer.forget()  # fenced: nothing of it reached anyone
        if self.metrics is not None:
            self.metrics.tick.observe(self.clock() - started)
        self.ticks += 1
        return batch

    def compose(self, keys: Iterable[Key], results: list[ScanResult]) -> Batch:
        """The batch ``results`` make for ``keys`` (:meth:`Composer.compose`)."""
        return self.composer.compose(keys, results)

    # -- charging failures to their profile ---------------------------------------------

    async def _refetch(
        self, keys: set[Key], results: list[ScanResult], deadline: float
    ) -> list[ScanResult]:
        """Requests refused over a column, fetched again in this tick without it.

        TradingView names one column per refusal, so this may take a few rounds. A refusal
        whose column no profile owns is split: the keys of each profile are fetched apart, and
        a profile still refused on its own is disabled."""
        for _ in range(REFETCH_ROUNDS):
            refused = [result for result in results if is_refused(result)]
            if not refused or self.clock() >= deadline:
                break
            again: set[Key] = set()
            requests: list[ScanRequest] = []
            for result in refused:
                affected = self.composer.keys_of(keys, result.request)
                if self.composer.charge(result):
                    again |= affected
                    continue
                profiles = {key.profile for key in affected}
                if len(profiles) == 1:
                    [name] = profiles
                    self.composer.disable(name, result)
                    continue
                for name in sorted(profiles):  # split: which profile's columns are refused?
                    requests += self.plan(key for key in affected if key.profile == name)
            requests += self.plan(again)
            results = [result for result in results if not is_refused(result)]
            if requests:
                results += await self.client.scan_all(requests, deadline=self._upstream(deadline))
        return results


def _throttled(results: list[ScanResult]) -> bool:
    return any(r.error is not None and r.error.kind in THROTTLED for r in results)
