"""Demand ``{(profile, symbol, tf)}`` -> the scanner requests of one tick.

The scanner is throttled per request (one project's working policy allows a request start every
0.8 s, so a 20 s tick holds about 25), while a request's size costs little: 1,000 tickers came
back in about 1.3 s. So the planner's job is to send few requests without asking for much that
nobody needs.

A request is a rectangle, some tickers times some columns, and a plan must cover every needed
``(ticker, column)`` cell exactly once. Each screener is planned two ways round and the cheaper
plan is kept (``requests * request_cost + cells fetched``; on a tie, the fewer requests, then
the first way):

- **by tickers**, the seed's way: tickers that need exactly the same columns share one request
  (the interval is part of the column name, so one request serves every timeframe), and every
  ticker sits in one request. Few distinct needs (everyone watching the same frames) plan best
  this way, and a ticker's row comes back whole.
- **by columns**: columns that exactly the same tickers need share one request, and every
  column sits in one request. On a Zipf demand each ticker watches its own handful of
  timeframes, so distinct needs grow with the tickers (hundreds), while the columns fall into
  a few blocks per timeframe and profile, whatever the number of tickers; a popular ticker's row
  then comes back in a few pieces, which the collector joins.

Either way, groups of one screener are then merged when a saved request is worth the cells the
merged request fetches for nobody, as long as the plan stays within ``Limits.max_overfetch``
(or ``overfetch_slack``, on a small demand).
Because a group holds every ticker (or every column) of its cells, merging two never fetches a
cell twice. Only a group too big for the limits is cut the other way, and its pieces are final.

Column and ticker sets are handled as ``int`` bitsets over the screener's sorted tickers and
the tick's columns (by timeframe, then in the ``full`` profile's order): unions and sizes are
then single machine operations, which keeps a plan of thousands of keys to milliseconds.
"""

from __future__ import annotations

import math
from bisect import insort
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress

from quartsig.domain.model import Key, ScanRequest
from quartsig.domain.timeframes import column, frame_order

__all__ = [
    "Limits",
    "needed_cells",
    "overfetch",
    "plan",
    "seed_grouping",
]


@dataclass(frozen=True)
class Limits:
    """How big one request may get, what saving one is worth, and how much waste is allowed.

    - ``max_tickers = 1000``: the largest request reported to work (about 1.3 s).
    - ``max_columns = 1000``: the built-in ``full`` profile on all ten timeframes needs 910
      columns for one ticker; a lower cap would split such a ticker's row across requests.
    - ``max_cells = 50_000``: about half what the reported 1,000-ticker request carried with
      tradingview-ta's 91 columns, so a request stays a few hundred KB and far inside the
      scanner timeout on a slow day; it still holds 54 tickers at 910 columns.
    - ``request_cost = 300``: the cost rule is ``requests * request_cost + cells fetched``,
      so a merge happens when it adds at most this many cells nobody asked for: about three
      tickers getting one more ``full`` timeframe (91 columns) none of them watches. Requests
      are the throttled resource, but bulk is not free either; at 300 the bench demands
      (``bench/planner.py``) need 3.4 to 19 times fewer requests than the seed's grouping
      while fetching at most 1.06 times the cells they need.
    - ``max_overfetch = 1.25``: a screener's plan never fetches more than this many times the
      cells its demand needs, whatever ``request_cost`` says (merges that would cross it are
      refused), so a large ``request_cost`` cannot buy unbounded bulk ...
    - ``overfetch_slack = 300``: ... except for this many unneeded cells, allowed however small
      the demand. On a few keys a ratio means nothing: a ``full`` key and a ``summary`` key
      share one request at an over-fetch of 2.0 (92 cells more), which beats two requests.
      ``max_overfetch=1.0, overfetch_slack=0`` allows no waste at all.
    """

    max_tickers: int = 1000
    max_columns: int = 1000
    max_cells: int = 50_000
    request_cost: int = 300
    max_overfetch: float = 1.25
    overfetch_slack: int = 300

    def __post_init__(self) -> None:
        for name in ("max_tickers", "max_columns", "max_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("request_cost", "overfetch_slack"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not self.max_overfetch >= 1.0:  # also refuses NaN
            raise ValueError("max_overfetch must be at least 1.0")


def needed_cells(
    demand: Iterable[Key], profile_columns: Mapping[str, Sequence[str]]
) -> dict[str, set[str]]:
    """Ticker -> the full column names its keys need: the ground truth tests and benches use."""
    needed: dict[str, set[str]] = defaultdict(set)
    for key in demand:
        needed[key.symbol].update(column(base, key.tf) for base in profile_columns[key.profile])
    return dict(needed)


def overfetch(requests: Iterable[ScanRequest], needed: Mapping[str, set[str]]) -> float:
    """Cells fetched / cells needed (1.0 is perfect); 1.0 for an empty demand."""
    fetched = sum(request.cells for request in requests)
    wanted = sum(len(columns) for columns in needed.values())
    return fetched / wanted if wanted else 1.0


@dataclass(slots=True)
class _Group:
    """A request under construction: ``members`` (tickers or columns) sharing one bitset of
    the other kind (columns or tickers)."""

    members: list[str]
    mask: int
    width: int  # popcount of mask
    seq: int = 0  # creation order: breaks ties between equally wide requests

    @property
    def cells(self) -> int:
        return len(self.members) * self.width


@dataclass(frozen=True, slots=True)
class _Bounds:
    """``Limits`` seen from one way round: how many members, how wide, how many cells."""

    members: int
    width: int
    cells: int


@dataclass(slots=True)
class _Catalogue:
    """Names in order (tickers sorted, columns by :func:`frame_order`); bit ``i`` of a mask
    stands for ``names[i]``."""

    names: list[str]

    def decode(self, mask: int) -> tuple[str, ...]:
        # bin() lists the most significant bit first; reversed and mapped to bytes 0/1 it is a
        # selector for compress(), so the whole decode runs in C.
        selectors = bin(mask)[:1:-1].translate(_BITS).encode("ascii")
        return tuple(compress(self.names, selectors))


_BITS = str.maketrans("01", "\x00\x01")


@dataclass(slots=True)
class _Screener:
    """One screener's demand, both ways round."""

    #: Column bitset -> the tickers needing exactly those columns: the seed's groups.
    by_need: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    #: ``(profile, tf)`` -> the tickers with that key.
    by_block: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def needed(self) -> int:
        return sum(len(tickers) * mask.bit_count() for mask, tickers in self.by_need.items())

    def by_audience(
        self, blocks: Mapping[tuple[str, str], tuple[str, ...]]
    ) -> tuple[_Catalogue, dict[int, list[str]]]:
        """The screener's sorted tickers, and ticker bitset -> the columns needed by exactly
        those tickers (their audience).

        Built from the blocks, not from each ticker's columns: a block's columns all have its
        tickers, so this costs the blocks' columns, not the demand's cells."""
        tickers = sorted(ticker for group in self.by_need.values() for ticker in group)
        bit = {ticker: 1 << i for i, ticker in enumerate(tickers)}
        of_column: dict[str, int] = defaultdict(int)
        for block, block_tickers in self.by_block.items():
            mask = _or(bit[ticker] for ticker in block_tickers)
            for name in blocks[block]:
                of_column[name] |= mask
        by_mask: dict[int, list[str]] = defaultdict(list)
        for name, mask in of_column.items():
            by_mask[mask].append(name)
        return _Catalogue(tickers), by_mask


def _screeners(
    demand: Iterable[Key],
    profile_columns: Mapping[str, Sequence[str]],
    screener_of: Callable[[str], str],
) -> tuple[_Catalogue, dict[tuple[str, str], tuple[str, ...]], dict[str, _Screener]]:
    """The tick's columns, each block's columns, and each screener's demand."""
    blocks: dict[tuple[str, str], tuple[str, ...]] = {}
    symbols: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for profile, symbol, tf in demand:
        block = (profile, tf)
        if block not in blocks:
            blocks[block] = tuple(column(base, tf) for base in profile_columns[profile])
        symbols[symbol].add(block)
    # Ordered by timeframe, then as ``full`` lists them: a key's columns sit together in every
    # row of a reply (a ``full`` key's run is its values as they stand), so the scanner
    # client can tell which timeframes of a moved row moved by comparing bytes
    # (scanner.RowCache) and parse only those.
    names = sorted({name for columns in blocks.values() for name in columns}, key=frame_order)
    bit = {name: 1 << i for i, name in enumerate(names)}
    block_masks = {block: _or(bit[name] for name in columns) for block, columns in blocks.items()}
    screeners: dict[str, _Screener] = defaultdict(_Screener)
    for symbol, symbol_blocks in symbols.items():
        mask = _or(block_masks[block] for block in symbol_blocks)
        if mask:  # a profile without columns needs nothing fetched
            screener = screeners[screener_of(symbol)]
            screener.by_need[mask].append(symbol)
            for block in symbol_blocks:
                screener.by_block[block].append(symbol)
    return _Catalogue(names), blocks, screeners


def _or(masks: Iterable[int]) -> int:
    result = 0
    for mask in masks:
        result |= mask
    return result


def _ordered(requests: Iterable[ScanRequest]) -> list[ScanRequest]:
    """A stable order across ticks, so the same demand sends the same requests."""
    return sorted(requests, key=lambda r: (r.screener, r.tickers, r.columns))


def seed_grouping(
    demand: Iterable[Key],
    profile_columns: Mapping[str, Sequence[str]],
    screener_of: Callable[[str], str],
) -> list[ScanRequest]:
    """The seed's rule, kept as the yardstick: per screener, one request per distinct need."""
    catalogue, _, screeners = _screeners(demand, profile_columns, screener_of)
    return _ordered(
        ScanRequest(name, tuple(sorted(tickers)), catalogue.decode(mask))
        for name, screener in screeners.items()
        for mask, tickers in screener.by_need.items()
    )


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _bit_chunks(mask: int, size: int) -> Iterator[tuple[int, int]]:
    """Split a bitset into ``(mask, width)`` pieces of at most ``size`` bits, low bits first."""
    piece = width = 0
    while mask:
        low = mask & -mask
        mask ^= low
        piece |= low
        width += 1
        if width == size:
            yield piece, width
            piece = width = 0
    if piece:
        yield piece, width


def _by_tickers_pieces(
    tickers: list[str], mask: int, bounds: _Bounds
) -> tuple[list[_Group], list[_Group]]:
    """Cut one seed group (tickers x column bitset) to the limits: ``(mergeable, final)``.

    Pieces cut by tickers still hold each ticker once, so they may merge like any group. Pieces
    cut by columns share tickers, and merging one would fetch a column a sibling already
    fetches for the same ticker, so they are final.
    """
    tickers = sorted(tickers)
    width = mask.bit_count()
    max_width = min(bounds.width, bounds.cells)
    if width <= max_width:
        per = min(bounds.members, bounds.cells // width)
        return [_Group(chunk, mask, width) for chunk in _chunks(tickers, per)], []
    final: list[_Group] = []
    for piece, piece_width in _bit_chunks(mask, max_width):
        per = min(bounds.members, bounds.cells // piece_width)
        final.extend(_Group(chunk, piece, piece_width) for chunk in _chunks(tickers, per))
    return [], final


def _by_columns_pieces(
    columns: list[str], mask: int, bounds: _Bounds
) -> tuple[list[_Group], list[_Group]]:
    """Cut one column group (columns x ticker bitset) to the limits: ``(mergeable, final)``.

    A group within the limits is mergeable. One that is not is cut by tickers first (by columns
    only beyond ``max_columns``), so a ticker's row stays in as few pieces as the limits allow,
    and every piece is final: a piece missing some of the group's tickers, merged, would fetch
    a cell a sibling fetches.
    """
    columns = sorted(columns, key=frame_order)
    width = mask.bit_count()
    size = len(columns)
    if size <= bounds.members and width <= bounds.width and size * width <= bounds.cells:
        return [_Group(columns, mask, width)], []
    final: list[_Group] = []
    for chunk in _chunks(columns, min(bounds.members, bounds.cells)):
        per = min(bounds.width, bounds.cells // len(chunk))
        final.extend(_Group(chunk, piece, bits) for piece, bits in _bit_chunks(mask, per))
    return [], final


def _merge(
    groups: list[_Group], budget: int, allowance: int, bounds: _Bounds
) -> tuple[list[_Group], int]:
    """One greedy merging pass within one screener: ``(groups, unneeded cells it added)``.

    Widest groups go first and become the requests; each later group joins the request where
    it adds the fewest cells nobody asked for, if that is at most ``budget`` (and, summed over
    the pass, ``allowance``) and the result stays within the bounds, and otherwise becomes a
    request of its own. Each merge saves one request, so a pass never returns more groups than
    it was given.

    Because groups come widest first, every request is at least as wide as the group being
    placed, so joining one ``extra`` bits wider adds at least ``members * extra`` cells.
    Requests are kept sorted by width and the scan stops where that bound alone is too much:
    without it, a demand of thousands of distinct needs would take quadratic time.
    """
    groups.sort(key=lambda g: (-g.width, -len(g.members), g.mask, g.members[0]))
    merged: list[_Group] = []  # ascending (width, seq)
    spent = 0
    for seq, group in enumerate(groups):
        size, own, width = len(group.members), group.cells, group.width
        best_at = -1
        best_added = min(budget, allowance - spent) + 1
        for at, target in enumerate(merged):
            if size * (target.width - width) >= best_added:
                break
            union = (target.mask | group.mask).bit_count()
            count = len(target.members) + size
            cells = count * union
            added = cells - target.cells - own
            if (
                added < best_added
                and count <= bounds.members
                and union <= bounds.width
                and cells <= bounds.cells
            ):
                best_at, best_added = at, added
                if added == 0:
                    break
        if best_at < 0:
            target = _Group(list(group.members), group.mask, width, seq)
        else:
            target = merged.pop(best_at)
            target.members.extend(group.members)
            target.mask |= group.mask
            target.width = target.mask.bit_count()
            spent += best_added
        insort(merged, target, key=_by_width)
    return merged, spent


def _by_width(group: _Group) -> tuple[int, int]:
    return group.width, group.seq


def _budgets(request_cost: int) -> tuple[int, ...]:
    """Merge passes, cheapest first.

    ``cost = requests * request_cost + cells fetched``: a merge is worth it when it adds at
    most ``request_cost`` cells. One pass at the full budget lets an early group take a dear
    merge that then blocks several cheap ones; passes at a quarter, a half and all of the
    budget take the cheap merges first. On the bench demand that gives about 20 % fewer
    requests for the same over-fetch.
    """
    return tuple(sorted({request_cost // 4, request_cost // 2, request_cost}))


def _merged(
    mergeable: list[_Group], final: list[_Group], allowance: int, limits: Limits, bounds: _Bounds
) -> list[_Group]:
    for budget in _budgets(limits.request_cost):
        mergeable, spent = _merge(mergeable, budget, allowance, bounds)
        allowance -= spent
    return mergeable + final


def _allowance(needed: int, limits: Limits) -> int:
    """Unneeded cells one screener's plan may fetch."""
    return max(math.floor((limits.max_overfetch - 1) * needed), limits.overfetch_slack)


def _cost(groups: Sequence[_Group], limits: Limits) -> tuple[int, int]:
    return len(groups) * limits.request_cost + sum(group.cells for group in groups), len(groups)


def plan(
    demand: Iterable[Key],
    profile_columns: Mapping[str, Sequence[str]],
    screener_of: Callable[[str], str],
    limits: Limits = Limits(),
) -> list[ScanRequest]:
    """The requests for one tick: every needed cell exactly once, in few requests.

    Guarantees (checked by ``tests/test_planner.py``):

    - every ``(ticker, column)`` a key needs is in exactly one request; a request holds tickers
      of one screener only;
    - a request asks a ticker for a column it does not need only because another ticker in
      the same request needs that column (a merge);
    - every request respects ``limits``, and each screener's plan fetches at most
      ``max(max_overfetch * needed, needed + overfetch_slack)`` cells, ``needed`` being the
      cells its keys need;
    - when every request of :func:`seed_grouping` respects ``limits``, there are never more
      requests than it has. A seed request that breaks a limit is first cut into
      ``ceil(tickers / per)`` pieces, ``per = min(max_tickers, max_cells // width)``, or, when
      its ``width`` (columns) exceeds ``min(max_columns, max_cells)``, into column pieces of
      that size each cut the same way; the bound then holds against the seed so cut;
    - every unneeded cell fetched buys a saved request: the cells beyond the demand are at
      most ``request_cost`` times the requests saved against the seed (so cut);
    - the same demand gives the same requests, in the same order, with sorted tickers and
      columns ordered by timeframe, then as ``full`` lists them, then by name
      (:func:`~quartsig.domain.timeframes.frame_order`: a key's columns are contiguous in a
      reply's rows).

    ``screener_of`` is called once per distinct symbol and may raise for an unknown exchange;
    callers are expected to have refused such symbols at subscribe time.
    """
    catalogue, blocks, screeners = _screeners(demand, profile_columns, screener_of)
    requests: list[ScanRequest] = []
    for name, screener in screeners.items():
        allowance = _allowance(screener.needed, limits)
        rows = _by_tickers(screener, allowance, limits)
        tickers, pieces = _by_columns(screener, blocks, allowance, limits)
        if _cost(pieces, limits) < _cost(rows, limits):
            requests.extend(
                ScanRequest(name, tickers.decode(group.mask),
                            tuple(sorted(group.members, key=frame_order)))
                for group in pieces
            )
        else:
            requests.extend(
                ScanRequest(name, tuple(sorted(group.members)), catalogue.decode(group.mask))
                for group in rows
            )
    return _ordered(requests)


def _by_tickers(screener: _Screener, allowance: int, limits: Limits) -> list[_Group]:
    """The plan by tickers: groups of tickers over a column bitset."""
    bounds = _Bounds(limits.max_tickers, limits.max_columns, limits.max_cells)
    mergeable: list[_Group] = []
    final: list[_Group] = []
    for mask, tickers in screener.by_need.items():
        pieces, fixed = _by_tickers_pieces(tickers, mask, bounds)
        mergeable.extend(pieces)
        final.extend(fixed)
    return _merged(mergeable, final, allowance, limits, bounds)


def _by_columns(
    screener: _Screener,
    blocks: Mapping[tuple[str, str], tuple[str, ...]],
    allowance: int,
    limits: Limits,
) -> tuple[_Catalogue, list[_Group]]:
    """The plan by columns: the screener's tickers, and groups of columns over a ticker bitset."""
    bounds = _Bounds(limits.max_columns, limits.max_tickers, limits.max_cells)
    tickers, by_mask = screener.by_audience(blocks)
    mergeable: list[_Group] = []
    final: list[_Group] = []
    for mask, names in by_mask.items():
        pieces, fixed = _by_columns_pieces(names, mask, bounds)
        mergeable.extend(pieces)
        final.extend(fixed)
    return tickers, _merged(mergeable, final, allowance, limits, bounds)
