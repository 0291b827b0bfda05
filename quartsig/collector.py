"""The collector: every ``interval`` seconds, demand -> plan -> fetch -> compute -> publish.

It runs only while its broker says this node leads (always, standalone), reads demand from the
broker and publishes each tick's outcome to it as one :class:`~quartsig.model.Batch`; it never
touches a hub, so the same loop serves one process or a cluster. A key nobody had before does not
wait for the next tick: it goes upstream in an *early fetch* of just the new keys, scheduled by
:class:`~quartsig.earlyfetch.EarlyFetches` (a lone key at once, a burst gathered for a few tens of
ms), beside any tick or other early fetch in flight. Early fetches draw on a
:class:`~quartsig.budget.RequestBudget`; a key beyond it waits for the next full tick and its
subscribers are told so (a ``deferred`` notice). Symbols TradingView said it does not have are
remembered, so asking for them again costs nothing upstream.

When every request of a tick is throttled, the collector backs off across ticks
(:class:`~quartsig.budget.Backoff`: exponential, jittered, ``Retry-After`` honoured, capped): it
sends one probe request per step, no early fetch, and tells clients when the next try is
(``retry_at`` in the ``status`` frame).

Computing is pure (:meth:`Collector.compose`): rows in, a batch out, with the inputs each key's
data came from remembered so that an unchanged row costs neither a compute nor a publication.

A plugin's failure is charged to its profile alone (see :mod:`quartsig.isolation`): a column
TradingView refuses is quarantined and the request fetched again without it in the same tick,
and a compute that raises or misbehaves costs only its own key; the profile's subscribers are
told with a ``profile_failed`` error and keep their subscription.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .broker import Broker
from .budget import Backoff, RequestBudget
from .earlyfetch import EarlyFetches
from .expiring import Expiring
from .isolation import COMPUTE_BUDGET, QUARANTINE, Failure, Quarantine, run_compute
from .logs import Sparse
from .model import Batch, Key, Layout, Row, ScanRequest, ScanResult
from .planner import Limits, plan
from .profiles import Profile
from .protocol import ErrorCode
from .scanner import ScannerClient, summarise
from .timeframes import column

log = logging.getLogger(__name__)

#: Rounds of re-fetching one tick may spend on refused columns (TradingView names one per 400).
REFETCH_ROUNDS = 4


def _refused(result: ScanResult) -> bool:
    """TradingView refused the request over a column: a profile's fault, not upstream's."""
    return result.error is not None and result.error.kind == "bad_column"


#: Seconds a symbol TradingView does not have is remembered by the collector (early fetches of
#: it are answered ``unknown_symbol`` without a request).
UNKNOWN_SYMBOL_TTL = 600.0
#: Scanner error kinds that mean "this address is being throttled or blocked".
THROTTLED = frozenset({"throttled", "blocked"})


#: A key's base names, its scanner columns, and how to pick their values from a row's cells.
_Shape = tuple[tuple[str, ...], tuple[str, ...], Callable[[list[Any]], tuple[Any, ...]] | None]


@dataclass(slots=True)
class Outcome:
    """What one fetch brought back, merged per ticker (a ticker may span several requests)."""

    rows: dict[str, Row] = field(default_factory=dict)
    incomplete: set[str] = field(default_factory=set)  # tickers in a failed request
    unknown: set[str] = field(default_factory=set)  # tickers TradingView does not have
    bad_columns: set[str] = field(default_factory=set)


def merge_results(results: Iterable[ScanResult]) -> Outcome:
    outcome = Outcome()
    rows = outcome.rows
    split: dict[str, list[Row]] = {}  # tickers in more than one request: their pieces
    missing: set[str] = set()
    for result in results:
        if result.ok:
            for ticker, row in result.rows.items():
                known = rows.setdefault(ticker, row)
                if known is not row:
                    split.setdefault(ticker, [known]).append(row)
            missing.update(result.missing)
        else:
            outcome.incomplete.update(result.request.tickers)
            if result.error is not None and result.error.column:
                outcome.bad_columns.add(result.error.column)
    layouts: dict[tuple[int, ...], Layout] = {}
    for ticker, pieces in split.items():
        rows[ticker] = Row.joined(pieces, layouts)
    outcome.unknown = missing - rows.keys() - outcome.incomplete
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
        batch_delay: float = 0.03,
        budget: RequestBudget | None = None,
        backoff: Backoff | None = None,
        backoff_max: float = 300.0,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        quarantine: float = QUARANTINE,
        compute_budget: float = COMPUTE_BUDGET,
        perf: Callable[[], float] = time.perf_counter,
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
        #: The schedule of early fetches (``batch_delay``: how long a burst is gathered).
        self.early = EarlyFetches(window=batch_delay, max_window=max(0.25, batch_delay),
                                  clock=clock)
        #: Upstream requests early fetches may make; None: no limit.
        self.budget = budget
        #: Consecutive throttled attempts push the next one back.
        self.backoff = backoff or Backoff(interval, backoff_max, clock=clock)
        self._backoff_stepped = -float("inf")
        self._next_tick = clock()
        self._fetches: set[asyncio.Task[None]] = set()
        self._unknown: Expiring[str, str] = Expiring(UNKNOWN_SYMBOL_TTL, clock=clock)
        #: Set after every tick, full or early: tests and tools wait on it instead of sleeping.
        self.ticked = asyncio.Event()
        #: Set by :meth:`stop`.
        self.stopping = False
        self._columns = {name: tuple(profile.columns) for name, profile in profiles.items()}
        self._pairs: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        #: The inputs each key's data was last computed from: an unchanged row is skipped.
        self._sources: dict[Key, tuple[Any, ...]] = {}
        #: Keys asked for by a newcomer and not published since: published even if unchanged
        #: (the newcomer's node has nothing for them, whatever this collector last computed).
        self._owed: set[Key] = set()
        #: Columns TradingView refused, and the profiles charged with them.
        self.quarantine = Quarantine(self._columns, period=quarantine, clock=clock)
        self.compute_budget = compute_budget
        self.perf = perf
        #: Keys whose subscribers were told their profile fails, and of which failure.
        self._told: dict[Key, str] = {}
        #: One log report per profile per minute: a failing compute fails on every row.
        self._complaints: dict[str, Sparse] = {}

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
            self._sources.clear()  # a new term: what others published meanwhile is unknown
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
                await asyncio.sleep(min(wake - now, self.interval))  # leadership checked often
                continue
            probe = self.backoff.active()
            demand = await self.broker.demand()
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
                    await asyncio.sleep(1.0)
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
            message = self._unknown.get(key.symbol)
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
        self._owed |= keys  # the next full tick publishes them, changed or not
        if self.metrics is not None:
            self.metrics.early_deferred.labels(reason=why).inc(len(keys))

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
        columns = self.quarantine.active()
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
            self._forget_all_but(keys)
        else:
            self._owed |= keys
        if not keys:
            batch = Batch(status=("ok", ""))
            await self.broker.publish(batch)
            self.ticks += 1
            return batch
        started = self.clock()
        deadline = started + self.interval * 0.9
        self._lift()
        if requests is None:
            requests = self.plan(keys)
        if probe:
            requests = requests[:1]
        if probe:  # one attempt: a probe must not knock again
            results = await self.client.scan_all(requests, deadline=deadline, retry=False)
        else:
            results = await self.client.scan_all(requests, deadline=deadline)
        self._throttle_check(results, started)
        if not probe:
            results = await self._refetch(keys, results, deadline)
        batch = self.compose(keys, results)
        for key, code, message in batch.rejected:
            if code == ErrorCode.UNKNOWN_SYMBOL:
                self._unknown.add(key.symbol, message)
        if batch.status is not None and self.backoff.active():
            batch.retry_at = self._wall_ms(self.backoff.until)
        if await self.broker.publish(batch):
            self._owed.difference_update(key for key, _, _ in batch.values)
            self._owed.difference_update(key for key, _, _ in batch.failed)  # told, nothing owed
        else:
            self._sources.clear()  # fenced: nothing of it reached anyone
        if self.metrics is not None:
            self.metrics.tick.observe(self.clock() - started)
        self.ticks += 1
        return batch

    def compose(self, keys: Iterable[Key], results: list[ScanResult]) -> Batch:
        """Synchronous and pure but for what it remembers: rows in, one batch out.

        A refused column left in ``results`` (a tick re-fetches around them first) is charged
        to its profile here. No compute can stop the batch: a failing one costs its own key."""
        ts = int(self.wall() * 1000)
        charged = [result for result in results if _refused(result) and self._charge(result)]
        if charged:
            results = [result for result in results if not any(result is c for c in charged)]
        outcome = merge_results(results)
        self._count(results)
        batch = Batch(term=self.broker.term)
        rejected: dict[str, list[Key]] = {}
        quarantine = self.quarantine
        # Hoisted out of the loop, which runs once per key (10 000 a tick): with nothing
        # quarantined, owed or told, each key costs a row look-up, a pick, a comparison and,
        # when its inputs changed, a compute.
        charges, owed, told = quarantine.charges, self._owed, self._told
        rows, unknown, incomplete = outcome.rows, outcome.unknown, outcome.incomplete
        sources, profiles = self._sources, self.profiles
        shapes: dict[tuple[Layout, str, str], _Shape] = {}
        for key in keys:
            profile, symbol, tf = key
            reason = quarantine.reason(profile) if charges else None
            if reason is not None and profile not in quarantine.active():
                self._tell(batch, key, reason)  # disabled: nothing of it is fetched
                continue
            row = rows.get(symbol)
            if row is None:
                if symbol in unknown:
                    rejected.setdefault(symbol, []).append(key)
                continue
            shape = shapes.get((row.layout, profile, tf))
            if shape is None:
                shape = shapes[(row.layout, profile, tf)] = self._shape(row, profile, tf)
            bases, columns, pick = shape
            if incomplete and symbol in incomplete and any(
                col not in row
                for base, col in zip(bases, columns, strict=True)
                if base not in quarantine.columns
            ):
                continue  # part of its columns failed: keep the last good data
            values = row.pick(columns) if pick is None else pick(row.cells)
            if sources.get(key) == values and (not owed or key not in owed):
                if reason is not None:
                    self._tell(batch, key, reason)
                continue  # same inputs as last time: same data, nothing to compute or send
            data = run_compute(
                profiles[profile], bases, values, budget=self.compute_budget, perf=self.perf
            )
            if isinstance(data, Failure):
                self._compute_failed(batch, key, data)
                continue
            sources[key] = values
            batch.values.append((key, data, ts))
            if reason is not None:
                self._tell(batch, key, reason)
            elif told:
                told.pop(key, None)
        for symbol, symbol_keys in rejected.items():
            message = f"TradingView has no symbol {symbol}"
            for key in symbol_keys:
                self._sources.pop(key, None)
                self._owed.discard(key)
                batch.rejected.append((key, str(ErrorCode.UNKNOWN_SYMBOL), message))
        batch.status = self._report(results, outcome)
        return batch

    # -- charging failures to their profile ---------------------------------------------

    async def _refetch(
        self, keys: set[Key], results: list[ScanResult], deadline: float
    ) -> list[ScanResult]:
        """Requests refused over a column, fetched again in this tick without it.

        TradingView names one column per refusal, so this may take a few rounds. A refusal
        whose column no profile owns is split: the keys of each profile are fetched apart, and
        a profile still refused on its own is disabled."""
        for _ in range(REFETCH_ROUNDS):
            refused = [result for result in results if _refused(result)]
            if not refused or self.clock() >= deadline:
                break
            again: set[Key] = set()
            requests: list[ScanRequest] = []
            for result in refused:
                affected = self._keys_of(keys, result.request)
                if self._charge(result):
                    again |= affected
                    continue
                profiles = {key.profile for key in affected}
                if len(profiles) == 1:
                    [name] = profiles
                    self._disable(name, result)
                    continue
                for name in sorted(profiles):  # split: which profile's columns are refused?
                    requests += self.plan(key for key in affected if key.profile == name)
            requests += self.plan(again)
            results = [result for result in results if not _refused(result)]
            if requests:
                results += await self.client.scan_all(requests, deadline=deadline)
        return results

    def _keys_of(self, keys: Iterable[Key], request: ScanRequest) -> set[Key]:
        """The keys with a column in ``request``."""
        tickers, wanted = set(request.tickers), set(request.columns)
        return {
            key
            for key in keys
            if key.symbol in tickers
            and self.screener_of(key.symbol) == request.screener
            and not wanted.isdisjoint(self._columns_for(key.profile, key.tf)[1])
        }

    def _charge(self, result: ScanResult) -> bool:
        """Quarantine the column ``result`` was refused over; False when no profile owns it."""
        assert result.error is not None
        base = (result.error.column or "").partition("|")[0]
        owners = self.quarantine.refuse_column(base, result.error.message) if base else []
        for name in owners:
            self._failed(name, "bad_column", self.quarantine.reason(name) or "")
        return bool(owners)

    def _disable(self, profile: str, result: ScanResult) -> None:
        assert result.error is not None
        self.quarantine.disable(profile, result.error.message)
        self._failed(profile, "bad_column", self.quarantine.reason(profile) or "")

    def _lift(self) -> None:
        lifted = self.quarantine.lift()
        for what in lifted:
            log.info("quarantine of %s lifted: it will be fetched again", what)
        if lifted:  # told of a quarantine that is over: tell again if it comes back
            charges = self.quarantine.charges
            for key in [key for key, told in self._told.items()
                        if told.startswith("quarantine:") and key.profile not in charges]:
                del self._told[key]

    def _compute_failed(self, batch: Batch, key: Key, failure: Failure) -> None:
        self._failed(key.profile, failure.kind, f"{failure.message} ({key.symbol} {key.tf})")
        self._tell(batch, key, failure.message, kind=failure.kind)

    def _failed(self, profile: str, kind: str, message: str) -> None:
        """Count a failure against ``profile`` and log it, at most once a minute per profile."""
        if self.metrics is not None:
            self.metrics.profile_failures.labels(profile=profile, kind=kind).inc()
        sparse = self._complaints.get(profile)
        if sparse is None:
            sparse = self._complaints[profile] = Sparse(60.0, self.clock)
        held = sparse.due()
        if held is not None:
            log.error("profile %s failed (%s): %s (%d more since the last report)",
                      profile, kind, message, held)

    def _tell(self, batch: Batch, key: Key, message: str, *, kind: str = "quarantine") -> None:
        """Tell ``key``'s subscribers, once per failure, that its profile fails (the hub tells
        newcomers)."""
        told = f"{kind}: {message}"
        if self._told.get(key) == told:
            return
        self._told[key] = told
        text = f"profile {key.profile!r} failed: {message}"
        batch.failed.append((key, str(ErrorCode.PROFILE_FAILED), text))

    def _forget_all_but(self, demand: set[Key]) -> None:
        """Drop what this collector remembers of keys nobody watches any more."""
        for key in [key for key in self._sources if key not in demand]:
            del self._sources[key]
        for key in [key for key in self._told if key not in demand]:
            del self._told[key]
        self._owed &= demand

    def _columns_for(self, profile: str, tf: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The profile's base names and their scanner columns on ``tf``, built once."""
        found = self._pairs.get((profile, tf))
        if found is None:
            bases = self._columns[profile]
            found = self._pairs[(profile, tf)] = (bases, tuple(column(b, tf) for b in bases))
        return found

    def _shape(self, row: Row, profile: str, tf: str) -> _Shape:
        """A key's base names, its scanner columns and the picker of their values from rows
        of ``row``'s layout (None: a column is absent, so :meth:`Row.pick` fills in nulls)."""
        bases, columns = self._columns_for(profile, tf)
        return bases, columns, row.layout.picker(columns)

    def _count(self, results: list[ScanResult]) -> None:
        if self.metrics is None:
            return
        for result in results:
            outcome = "ok" if result.ok else (result.error.kind if result.error else "error")
            self.metrics.upstream.labels(outcome=outcome).inc()
            self.metrics.cells.inc(result.request.cells)

    def _report(self, results: list[ScanResult], outcome: Outcome) -> tuple[str, str]:
        """Upstream health from the requests nobody's profile is to blame for."""
        upstream, reason = summarise(results)
        if outcome.bad_columns:
            names = ", ".join(sorted(outcome.bad_columns))
            log.error("TradingView refused column(s) %s, which no profile owns", names)
            reason = f"TradingView refused column(s) {names}"
        elif upstream != "ok":
            log.warning("upstream %s: %s", upstream, reason)
        return upstream, reason
