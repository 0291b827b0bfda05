"""The values every layer shares: what somebody watches, what one request asks, what comes back.

A leaf: it imports nothing of quartsig, so the pure core (planner, hub, protocol) and the shell
(scanner client, broker, collector) can all speak of a ``Key`` or a ``Row`` without one layer
pulling in another's dependencies (the hub used to load aiohttp through the planner).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple


class Key(NamedTuple):
    """One thing somebody watches: normalised ``EXCHANGE:TICKER``, canonical timeframe."""

    profile: str
    symbol: str
    tf: str


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """One POST to ``/{screener}/scan``: these tickers, these (suffixed) columns."""

    screener: str  # "forex", "crypto", "america", ...
    tickers: tuple[str, ...]  # "FX_IDC:USDJPY", ...
    columns: tuple[str, ...]  # full column names with suffix: "RSI|5", "Recommend.All"

    @property
    def cells(self) -> int:
        return len(self.tickers) * len(self.columns)


@dataclass(frozen=True, slots=True)
class ScanError:
    """Why a request failed, and whether trying again could help."""

    # "bad_column" | "bad_request" | "not_found" | "throttled" | "blocked" | "server"
    # | "timeout" | "connection" | "bad_body"
    kind: str
    message: str  # human-readable, never contains proxy credentials
    retryable: bool
    status: int | None = None
    column: str | None = None  # for bad_column: the offending column as TradingView named it
    retry_after: float | None = None


def _whole(values: Sequence[Any]) -> tuple[Any, ...]:
    """The picker of a key whose names are its run, in order: the run's tuple itself."""
    return values  # type: ignore[return-value]  # Row.runs holds tuples


class Layout:
    """One request's columns: where each sits in a row's ``d`` list, and pickers over them.

    Every row of a reply shares its request's layout, so parsing a row costs one small
    object instead of a dict of all its values (910 for ``full`` over ten timeframes: that
    dict was most of the parse), and a key's values come out through one ``itemgetter``.
    """

    __slots__ = ("_blocks_of", "_pickers", "blocks", "columns", "index")

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        self.index = {name: position for position, name in enumerate(self.columns)}
        self._pickers: dict[tuple[str, ...], Callable[[Sequence[Any]], tuple[Any, ...]] | None] = {}
        #: Runs of consecutive columns of one timeframe (the same ``|suffix``), as ``(start,
        #: stop)`` positions: the planner orders columns by timeframe, so a request's rows hold
        #: one run per timeframe, and a key's cells lie in one run. The scanner client's row
        #: cache compares a moved row run by run and tells which runs moved (``Row.moved``).
        blocks: list[tuple[int, int]] = []
        start, last = 0, None
        for position, name in enumerate(self.columns):
            suffix = name.partition("|")[2]
            if position and suffix != last:
                blocks.append((start, position))
                start = position
            last = suffix
        if self.columns:
            blocks.append((start, len(self.columns)))
        self.blocks = tuple(blocks)
        self._blocks_of: dict[tuple[str, ...], frozenset[int] | None] = {}

    def run_picker(
        self, names: tuple[str, ...]
    ) -> tuple[int, Callable[[Sequence[Any]], tuple[Any, ...]]] | None:
        """The run holding all of ``names`` and a function from that run's values to theirs
        (for :attr:`Row.runs`); None if they are not all in one run."""
        runs = self.blocks_of(names)
        if not names or runs is None or len(runs) != 1:
            return None
        run = next(iter(runs))
        offset = self.blocks[run][0]
        positions = [self.index[name] - offset for name in names]
        if positions == list(range(self.blocks[run][1] - offset)):
            return run, _whole  # the run is the names, in their order: no tuple to pick
        if len(positions) == 1:
            position = positions[0]
            return run, lambda values: (values[position],)
        return run, itemgetter(*positions)

    def blocks_of(self, names: tuple[str, ...]) -> frozenset[int] | None:
        """The runs (indexes into :attr:`blocks`) holding ``names``; None if one is absent."""
        try:
            return self._blocks_of[names]
        except KeyError:
            pass
        index = self.index
        found: frozenset[int] | None = None
        if all(name in index for name in names):
            starts = [start for start, _ in self.blocks]
            found = frozenset(bisect_right(starts, index[name]) - 1 for name in names)
        self._blocks_of[names] = found
        return found

    def picker(self, names: tuple[str, ...]) -> Callable[[Sequence[Any]], tuple[Any, ...]] | None:
        """A function from a row's values to those of ``names``; ``None`` if one is absent."""
        try:
            return self._pickers[names]
        except KeyError:
            pass
        index = self.index
        if not names or any(name not in index for name in names):
            found = None
        elif len(names) == 1:
            position = index[names[0]]
            found = lambda values: (values[position],)  # noqa: E731 (itemgetter of one is no tuple)
        else:
            positions = [index[name] for name in names]
            start, stop = positions[0], positions[-1] + 1
            if positions == list(range(start, stop)):  # one slice, not an item at a time
                found = lambda values: tuple(values[start:stop])  # noqa: E731
            else:
                found = itemgetter(*positions)
        self._pickers[names] = found
        return found


class Row(Mapping[str, Any]):
    """One ticker's values in a reply, read by full column name (``"RSI|60"``)."""

    __slots__ = ("_cells", "layout", "moved", "runs", "since")

    def __init__(self, layout: Layout, cells: Sequence[Any] | None, since: Row | None = None,
                 moved: int = 0,
                 runs: tuple[tuple[Any, ...], ...] | None = None) -> None:
        self.layout = layout
        #: The cells as one tuple per run of :attr:`Layout.blocks` (the scanner client's row
        #: cache), or None. A moved row shares the runs that did not move with the row it
        #: replaces, as the same tuples: making it touches 10 references, not the 910 cells
        #: (each an increment of a float allocated ticks ago, out of the cache: 45 us a row).
        #: ``cells`` is then made from them when first read.
        self.runs = runs
        #: The row of the last reply this one replaces, when only the runs of columns in
        #: ``moved`` (a bit mask of indexes into ``layout.blocks``: an int, which the cycle
        #: collector does not track, where a set is) differ from it, to the byte; every other
        #: cell is the very object ``since`` holds. Set by the scanner client's row cache (and
        #: cleared on ``since`` when the next row replaces this one, so no chain builds up):
        #: the composer skips a key whose runs did not move and which settled from ``since``.
        self.since = since
        self.moved = moved
        #: The raw ``d`` values, in the layout's order (not ``values``: a Mapping's method);
        #: None when made from ``runs``.
        #: The scanner client's row cache makes them a tuple: a tuple of numbers is untracked
        #: by the cycle collector at its first collection, where a list is traversed by every
        #: collection of its generation while it lives. A tick's rows hold ~910 000 cells and
        #: an unmoved row lives for many ticks: as lists they were most of what full
        #: collections walked (2.8 million references in bench.tick's steady ticks). The copy
        #: is cheap only while orjson's floats are in the cache (one row just parsed), so
        #: :func:`~quartsig.upstream.scanner.parse_body`, which parses a whole reply at once,
        #: keeps orjson's lists (a fallback: 1.26x its parse with the copy).
        self._cells = cells

    @property
    def cells(self) -> Sequence[Any]:
        """The raw ``d`` values, in the layout's order (see ``_cells`` in ``__init__``)."""
        cells = self._cells
        if cells is None:
            cells = self._cells = tuple(chain.from_iterable(self.runs or ()))
        return cells

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Row:
        """A row holding ``values``, for results made by hand (tests, tools)."""
        return cls(Layout(tuple(values)), list(values.values()))

    def __getitem__(self, name: str) -> Any:
        return self.cells[self.layout.index[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout.index)

    def __len__(self) -> int:
        return len(self.layout.index)

    def __contains__(self, name: object) -> bool:
        return name in self.layout.index

    def get(self, name: str, default: Any = None) -> Any:
        position = self.layout.index.get(name)
        return default if position is None else self.cells[position]

    def pick(self, names: tuple[str, ...]) -> tuple[Any, ...]:
        """The values of ``names`` in order, ``None`` for any the row does not have."""
        picker = self.layout.picker(names)
        if picker is None:
            return tuple(map(self.get, names))
        return picker(self.cells)

    @staticmethod
    def joined(pieces: Sequence[Row], layouts: dict[tuple[int, ...], Layout]) -> Row:
        """One row of a ticker's ``pieces`` (it spans several requests); where two have a
        column, the later piece's value wins, as ``dict.update`` would have it.

        A plan by columns splits most tickers the same few ways, so ``layouts`` (one dict per
        fetch, keyed by the pieces' layouts) gives every ticker split alike one joined layout,
        and with it one picker per key's columns instead of one per ticker."""
        shape = tuple(id(piece.layout) for piece in pieces)  # alive for the fetch: ids stay put
        layout = layouts.get(shape)
        if layout is None:
            layout = layouts[shape] = Layout(
                [column for piece in pieces for column in piece.layout.columns])
        return Row(layout, tuple(chain.from_iterable(piece.cells for piece in pieces)))

    def __repr__(self) -> str:
        return f"Row({dict(self)!r})"


@dataclass(slots=True)
class ScanResult:
    """What one request produced. Failed requests carry no rows: last good values stay put."""

    request: ScanRequest
    rows: dict[str, Row]  # ticker -> its values, by full column name
    missing: frozenset[str]  # requested tickers absent from a successful response
    error: ScanError | None  # None on success; on failure rows is {} and missing is empty
    attempts: int
    elapsed: float  # seconds, monotonic

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class Batch:
    """One tick's outcome as the collector publishes it and every node applies it to its hub.

    It carries computed data, not raw rows, so that a node needs no profile code to apply it and
    each node diffs and encodes once for its own subscribers. ``term`` is the leader's fencing
    term (0 standalone), for health and logs; in a cluster the order of values is kept by the
    global ``seq`` Redis gives each publication (:mod:`quartsig.cluster.redis`), which a fenced,
    older leader can never write.
    """

    values: list[tuple[Key, dict[str, Any], int]] = field(default_factory=list)  # key, data, ts
    rejected: list[tuple[Key, str, str]] = field(default_factory=list)  # key, code, message
    status: tuple[str, str] | None = None  # upstream health and why; None: unchanged
    term: int = 0
    #: key, code, message: subscribers are told, and keep the subscription (a failing profile)
    failed: list[tuple[Key, str, str]] = field(default_factory=list)
    #: Keys whose first data waits (early-fetch budget spent, or throttled): key, message, and
    #: when the next try is (Unix ms). Their subscribers get a ``deferred`` notice.
    deferred: list[tuple[Key, str, int]] = field(default_factory=list)
    #: With ``status``: when the collector, backing off from throttling, tries next (Unix ms).
    retry_at: int | None = None
    #: Key -> (the data its value replaces, what changed from it): the items of the new data
    #: that differ (``!=``) from the collector's previous data for the key, known from the
    #: compute itself. A hub still holding that very data object sends ``changes`` without
    #: diffing again; after a publication these are the keys whose outputs changed (an empty
    #: dict: inputs moved, outputs did not). Only this process's collector knows them: the
    #: Redis broker does not carry them, and its nodes diff as before.
    changes: dict[Key, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.values or self.rejected or self.failed or self.deferred
                    or self.status is not None)
