"""The composer: a tick's rows in, one :class:`~quartsig.domain.model.Batch` out, and each plugin
failure charged to its profile.

Computing is pure (:meth:`Composer.compose`): rows in, a batch out, with the inputs each key's
data came from remembered so that an unchanged row costs neither a compute nor a publication.

A plugin's failure is charged to its profile alone (see :mod:`quartsig.plugins.guard`): a column
TradingView refuses is quarantined (the collector fetches the request again without it in the
same tick), and a compute that raises or misbehaves costs only its own key; the profile's
subscribers are told with a ``profile_failed`` error and keep their subscription.

The collector (:mod:`quartsig.feed.collector`) keeps the loop, the fetching and the early fetches;
this module keeps what a tick is composed from and what it owes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quartsig.cluster.broker import Broker
from quartsig.domain.model import Batch, Key, Layout, Row, ScanRequest, ScanResult
from quartsig.domain.protocol import ErrorCode
from quartsig.domain.timeframes import column
from quartsig.fanout.hub import Diff, shaped_diff
from quartsig.ops.logs import Sparse
from quartsig.plugins.guard import COMPUTE_BUDGET, QUARANTINE, Failure, Quarantine, run_compute
from quartsig.plugins.profiles import Profile
from quartsig.upstream.scanner import summarise

log = logging.getLogger(__name__)

#: Rounds of re-fetching one tick may spend on refused columns (TradingView names one per 400).
REFETCH_ROUNDS = 4


def is_refused(result: ScanResult) -> bool:
    """TradingView refused the request over a column: a profile's fault, not upstream's."""
    return result.error is not None and result.error.kind == "bad_column"


#: A key's base names, its scanner columns, how to pick their values from a row's cells, the
#: layout's runs of columns that hold them (a bit mask, as :attr:`Row.moved`), and the one run
#: that holds them all with a picker over its values (for :attr:`Row.runs`), if one does.
_Shape = tuple[tuple[str, ...], tuple[str, ...],
               Callable[[Sequence[Any]], tuple[Any, ...]] | None, int | None,
               tuple[int, Callable[[Sequence[Any]], tuple[Any, ...]]] | None]


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
            found = result.rows
            if rows.keys().isdisjoint(found):
                rows.update(found)  # each ticker in one request, as the planner makes them
            else:
                for ticker, row in found.items():
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


class Composer:
    def __init__(
        self,
        broker: Broker,
        profiles: Mapping[str, Profile],
        screener_of: Callable[[str], str],
        *,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        quarantine: float = QUARANTINE,
        compute_budget: float = COMPUTE_BUDGET,
        perf: Callable[[], float] = time.thread_time,
    ) -> None:
        self.broker = broker
        self.profiles = profiles
        self.screener_of = screener_of
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self._columns = {name: tuple(profile.columns) for name, profile in profiles.items()}
        self._pairs: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        #: The inputs each key's data was last computed from: an unchanged row is skipped.
        self.sources: dict[Key, tuple[Any, ...]] = {}
        #: The row each key's inputs were last found unchanged in or computed from: the
        #: scanner client hands back the very same row while its bytes do not move
        #: (:class:`~quartsig.upstream.scanner.RowCache`), so such a key costs one look-up;
        #: and a moved row says which runs of columns moved since the row it replaces
        #: (``Row.since``, ``Row.moved``), so a key of another run costs two.
        self.settled: dict[Key, Row] = {}
        #: The data each key was last published with: what its next changes are taken from.
        self.outputs: dict[Key, dict[str, Any]] = {}
        #: Each profile's diff, for profiles without ``compute_changes`` (:func:`shaped_diff`).
        self._diffs: dict[str, Diff] = {}
        #: Keys asked for by a newcomer and not published since: published even if unchanged
        #: (the newcomer's node has nothing for them, whatever this collector last computed).
        self.owed: set[Key] = set()
        #: Columns TradingView refused, and the profiles charged with them.
        self.quarantine = Quarantine(self._columns, period=quarantine, clock=clock)
        self.compute_budget = compute_budget
        self.perf = perf
        #: Keys whose subscribers were told their profile fails, and of which failure.
        self._told: dict[Key, str] = {}
        #: One log report per profile per minute: a failing compute fails on every row.
        self._complaints: dict[str, Sparse] = {}

    def compose(self, keys: Iterable[Key], results: list[ScanResult]) -> Batch:
        """Synchronous and pure but for what it remembers: rows in, one batch out.

        A refused column left in ``results`` (a tick re-fetches around them first) is charged
        to its profile here. No compute can stop the batch: a failing one costs its own key."""
        ts = int(self.wall() * 1000)
        charged = [result for result in results if is_refused(result) and self.charge(result)]
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
        charges, owed, told = quarantine.charges, self.owed, self._told
        rows, unknown, incomplete = outcome.rows, outcome.unknown, outcome.incomplete
        sources, outputs, profiles = self.sources, self.outputs, self.profiles
        settled = self.settled
        changes = batch.changes
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
            was = settled.get(key)
            if was is row and (not owed or key not in owed):
                if reason is not None:
                    self._tell(batch, key, reason)
                continue  # the very row it settled from: the same inputs, as below
            shape = shapes.get((row.layout, profile, tf))
            if shape is None:
                shape = shapes[(row.layout, profile, tf)] = self._shape(row, profile, tf)
            bases, columns, pick, runs, by_run = shape
            if (was is not None and was is row.since and runs is not None
                    and not runs & row.moved and (not owed or key not in owed)):
                # The row that replaced the one it settled from, in runs of columns other
                # than its own: its cells are the very objects it settled from.
                settled[key] = row
                if reason is not None:
                    self._tell(batch, key, reason)
                continue
            if incomplete and symbol in incomplete and any(
                col not in row
                for base, col in zip(bases, columns, strict=True)
                if base not in quarantine.columns
            ):
                continue  # part of its columns failed: keep the last good data
            runs_of_row = row.runs
            if runs_of_row is not None and by_run is not None:
                values = by_run[1](runs_of_row[by_run[0]])
            else:
                values = row.pick(columns) if pick is None else pick(row.cells)
            if sources.get(key) == values and (not owed or key not in owed):
                settled[key] = row
                if reason is not None:
                    self._tell(batch, key, reason)
                continue  # same inputs as last time: same data, nothing to compute or send
            previous = outputs.get(key)
            made = self._compute(profiles[profile], bases, values, previous)
            if isinstance(made, Failure):
                self._compute_failed(batch, key, made)
                continue
            data, delta = made
            sources[key] = values
            settled[key] = row
            outputs[key] = data
            batch.values.append((key, data, ts))
            if previous is not None and delta is not None:
                changes[key] = (previous, delta)
            if reason is not None:
                self._tell(batch, key, reason)
            elif told:
                told.pop(key, None)
        for symbol, symbol_keys in rejected.items():
            message = f"TradingView has no symbol {symbol}"
            for key in symbol_keys:
                self.sources.pop(key, None)
                self.outputs.pop(key, None)
                self.settled.pop(key, None)
                self.owed.discard(key)
                batch.rejected.append((key, str(ErrorCode.UNKNOWN_SYMBOL), message))
        batch.status = self._report(results, outcome)
        return batch

    def _compute(
        self, profile: Profile, bases: tuple[str, ...], values: tuple[Any, ...],
        previous: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None] | Failure:
        """A key's data and its changes from ``previous`` (None: nothing to change from).

        A built-in profile with ``compute_changes`` recomputes only what its moved inputs
        feed; any other profile computes the whole data, diffed here rather than in the hub,
        so every batch says which keys' outputs changed."""
        kernel = profile.compute_changes
        if previous is not None and kernel is not None and profile.checked:
            try:
                return kernel(values, previous)
            except Exception as error:  # as run_compute would report it
                return Failure("exception", f"compute raised {type(error).__name__}: {error}")
        data = run_compute(profile, bases, values, budget=self.compute_budget, perf=self.perf)
        if isinstance(data, Failure) or previous is None:
            return data if isinstance(data, Failure) else (data, None)
        differ = self._diffs.get(profile.name)
        if differ is None:
            differ = self._diffs[profile.name] = shaped_diff(tuple(data))
        return data, differ(previous, data)

    def forget(self) -> None:
        """Forget every key's inputs and data: the next tick computes and publishes all anew
        (a new term, or a publication that was fenced and reached nobody)."""
        self.sources.clear()
        self.outputs.clear()
        self.settled.clear()

    # -- charging failures to their profile ---------------------------------------------

    def keys_of(self, keys: Iterable[Key], request: ScanRequest) -> set[Key]:
        """The keys with a column in ``request``."""
        tickers, wanted = set(request.tickers), set(request.columns)
        return {
            key
            for key in keys
            if key.symbol in tickers
            and self.screener_of(key.symbol) == request.screener
            and not wanted.isdisjoint(self._columns_for(key.profile, key.tf)[1])
        }

    def charge(self, result: ScanResult) -> bool:
        """Quarantine the column ``result`` was refused over; False when no profile owns it."""
        assert result.error is not None
        base = (result.error.column or "").partition("|")[0]
        owners = self.quarantine.refuse_column(base, result.error.message) if base else []
        for name in owners:
            self._failed(name, "bad_column", self.quarantine.reason(name) or "")
        return bool(owners)

    def disable(self, profile: str, result: ScanResult) -> None:
        assert result.error is not None
        self.quarantine.disable(profile, result.error.message)
        self._failed(profile, "bad_column", self.quarantine.reason(profile) or "")

    def lift(self) -> None:
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

    def forget_all_but(self, demand: set[Key]) -> None:
        """Drop what this collector remembers of keys nobody watches any more."""
        for key in [key for key in self.sources if key not in demand]:
            del self.sources[key]
        for key in [key for key in self.outputs if key not in demand]:
            del self.outputs[key]
        for key in [key for key in self.settled if key not in demand]:
            del self.settled[key]
        for key in [key for key in self._told if key not in demand]:
            del self._told[key]
        self.owed &= demand

    def _columns_for(self, profile: str, tf: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The profile's base names and their scanner columns on ``tf``, built once."""
        found = self._pairs.get((profile, tf))
        if found is None:
            bases = self._columns[profile]
            found = self._pairs[(profile, tf)] = (bases, tuple(column(b, tf) for b in bases))
        return found

    def _shape(self, row: Row, profile: str, tf: str) -> _Shape:
        """A key's base names, its scanner columns and the picker of their values from rows
        of ``row``'s layout (None: a column is absent, so :meth:`Row.pick` fills in nulls), and the
        layout's runs holding them."""
        bases, columns = self._columns_for(profile, tf)
        layout = row.layout
        runs = layout.blocks_of(columns)
        mask = None if runs is None else sum(1 << run for run in runs)
        return bases, columns, layout.picker(columns), mask, layout.run_picker(columns)

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
