"""Demand ``{(profile, symbol, tf)}`` -> the scanner requests of one tick.

The scanner is throttled per request (one project's working policy allows a request start every
0.8 s, so a 20 s tick holds about 25), while a request's size costs little: 1,000 tickers came
back in about 1.3 s. So the planner's job is to send few requests without asking for much that
nobody needs.

It starts from the seed's grouping (per screener, the tickers that need exactly the same
columns share one request: the interval is part of the column name, so one request serves
every timeframe), then merges groups of one screener when a saved request is worth the cells
the merged request fetches for nobody. Every ticker sits in exactly one request, which is why
no cell is ever fetched twice; only a ticker that alone needs more columns than a request may
carry is split, by columns, across several.

Column sets are handled as ``int`` bitsets over the tick's sorted column list: unions and sizes
are then single machine operations, which keeps a plan of thousands of keys to milliseconds.
"""

from __future__ import annotations

from bisect import insort
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress

from quartsig.model import Key, ScanRequest
from quartsig.timeframes import column

__all__ = [
    "Limits",
    "needed_cells",
    "overfetch",
    "plan",
    "seed_grouping",
]


@dataclass(frozen=True)
class Limits:
    """How big one request may get, and what saving one is worth.

    - ``max_tickers = 1000``: the largest request reported to work (about 1.3 s).
    - ``max_columns = 1000``: the built-in ``full`` profile on all ten timeframes needs 910
      columns for one ticker; a lower cap would split such a ticker's row across requests.
    - ``max_cells = 50_000``: about half what the reported 1,000-ticker request carried with
      tradingview-ta's 91 columns, so a request stays a few hundred KB and far inside the
      scanner timeout on a slow day; it still holds 54 tickers at 910 columns.
    - ``request_cost = 300``: the cost rule is ``requests * request_cost + cells fetched``,
      so a merge happens when it adds at most this many cells nobody asked for: about three
      tickers getting one more ``full`` timeframe (91 columns) none of them watches. Requests
      are the throttled resource, but bulk is not free either; at 300 the bench demand
      (``bench/planner.py``) needs 3-5 times fewer requests than the seed's grouping while
      fetching at most about 1.2 times the cells it needs (1,000 would halve the requests
      again for 1.4 to 1.7 times).
    """

    max_tickers: int = 1000
    max_columns: int = 1000
    max_cells: int = 50_000
    request_cost: int = 300

    def __post_init__(self) -> None:
        for name in ("max_tickers", "max_columns", "max_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.request_cost < 0:
            raise ValueError("request_cost must not be negative")


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
    """A request under construction: tickers sharing one column bitset."""

    tickers: list[str]
    mask: int
    width: int  # popcount of mask
    seq: int = 0  # creation order: breaks ties between equally wide requests

    @property
    def cells(self) -> int:
        return len(self.tickers) * self.width


@dataclass(slots=True)
class _Catalogue:
    """The tick's columns in sorted order; bit ``i`` of a mask stands for ``names[i]``."""

    names: list[str]

    def decode(self, mask: int) -> tuple[str, ...]:
        # bin() lists the most significant bit first; reversed and mapped to bytes 0/1 it is a
        # selector for compress(), so the whole decode runs in C.
        selectors = bin(mask)[:1:-1].translate(_BITS).encode("ascii")
        return tuple(compress(self.names, selectors))


_BITS = str.maketrans("01", "\x00\x01")


def _tickers_by_mask(
    demand: Iterable[Key],
    profile_columns: Mapping[str, Sequence[str]],
    screener_of: Callable[[str], str],
) -> tuple[_Catalogue, dict[str, dict[int, list[str]]]]:
    """Screener -> column bitset -> tickers needing exactly it: the seed's groups."""
    blocks: dict[tuple[str, str], tuple[str, ...]] = {}
    symbols: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for profile, symbol, tf in demand:
        block = (profile, tf)
        if block not in blocks:
            blocks[block] = tuple(column(base, tf) for base in profile_columns[profile])
        symbols[symbol].add(block)
    names = sorted({name for columns in blocks.values() for name in columns})
    bit = {name: 1 << i for i, name in enumerate(names)}
    block_masks = {block: _or(bit[name] for name in columns) for block, columns in blocks.items()}
    groups: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for symbol, symbol_blocks in symbols.items():
        mask = _or(block_masks[block] for block in symbol_blocks)
        if mask:  # a profile without columns needs nothing fetched
            groups[screener_of(symbol)][mask].append(symbol)
    return _Catalogue(names), groups


def _or(masks: Iterable[int]) -> int:
    result = 0
    for mask in masks:
        result |= mask
    return result


def _requests(
    screener: str, groups: Iterable[_Group], catalogue: _Catalogue
) -> Iterator[ScanRequest]:
    for group in groups:
        yield ScanRequest(screener, tuple(sorted(group.tickers)), catalogue.decode(group.mask))


def _ordered(requests: Iterable[ScanRequest]) -> list[ScanRequest]:
    """A stable order across ticks, so the same demand sends the same requests."""
    return sorted(requests, key=lambda r: (r.screener, r.tickers, r.columns))


def seed_grouping(
    demand: Iterable[Key],
    profile_columns: Mapping[str, Sequence[str]],
    screener_of: Callable[[str], str],
) -> list[ScanRequest]:
    """The seed's rule, kept as the yardstick: per screener, one request per distinct need."""
    catalogue, by_screener = _tickers_by_mask(demand, profile_columns, screener_of)
    requests: list[ScanRequest] = []
    for screener, by_mask in by_screener.items():
        groups = (_Group(tickers, mask, mask.bit_count()) for mask, tickers in by_mask.items())
        requests.extend(_requests(screener, groups, catalogue))
    return _ordered(requests)


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _column_chunks(mask: int, size: int) -> Iterator[tuple[int, int]]:
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


def _split(tickers: list[str], mask: int, limits: Limits) -> tuple[list[_Group], list[_Group]]:
    """Cut one seed group to the limits: ``(mergeable pieces, final pieces)``.

    Pieces cut by tickers still hold each ticker once, so they may merge like any group. Pieces
    cut by columns share tickers, and merging one would fetch a column a sibling already
    fetches for the same ticker, so they are final.
    """
    tickers = sorted(tickers)
    width = mask.bit_count()
    max_width = min(limits.max_columns, limits.max_cells)
    if width <= max_width:
        per = min(limits.max_tickers, limits.max_cells // width)
        return [_Group(chunk, mask, width) for chunk in _chunks(tickers, per)], []
    final: list[_Group] = []
    for piece, piece_width in _column_chunks(mask, max_width):
        per = min(limits.max_tickers, limits.max_cells // piece_width)
        final.extend(_Group(chunk, piece, piece_width) for chunk in _chunks(tickers, per))
    return [], final


def _merge(groups: list[_Group], budget: int, limits: Limits) -> list[_Group]:
    """One greedy merging pass within one screener.

    Widest groups go first and become the requests; each later group joins the request where
    it adds the fewest cells nobody asked for, if that is at most ``budget`` and the result
    stays within the limits, and otherwise becomes a request of its own. Each merge saves one
    request, so a pass never returns more groups than it was given.

    Because groups come widest first, every request is at least as wide as the group being
    placed, so joining one ``extra`` columns wider adds at least ``tickers * extra`` cells.
    Requests are kept sorted by width and the scan stops where that bound alone is too much:
    without it, a demand of thousands of distinct needs would take quadratic time.
    """
    groups.sort(key=lambda g: (-g.width, -len(g.tickers), g.mask, g.tickers[0]))
    merged: list[_Group] = []  # ascending (width, seq)
    for seq, group in enumerate(groups):
        size, own, width = len(group.tickers), group.cells, group.width
        best_at = -1
        best_added = budget + 1
        for at, target in enumerate(merged):
            if size * (target.width - width) >= best_added:
                break
            union = (target.mask | group.mask).bit_count()
            count = len(target.tickers) + size
            cells = count * union
            added = cells - target.cells - own
            if (
                added < best_added
                and count <= limits.max_tickers
                and union <= limits.max_columns
                and cells <= limits.max_cells
            ):
                best_at, best_added = at, added
                if added == 0:
                    break
        if best_at < 0:
            target = _Group(list(group.tickers), group.mask, width, seq)
        else:
            target = merged.pop(best_at)
            target.tickers.extend(group.tickers)
            target.mask |= group.mask
            target.width = target.mask.bit_count()
        insort(merged, target, key=_by_width)
    return merged


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
    - every request respects ``limits``;
    - when every request of :func:`seed_grouping` respects ``limits``, there are never more
      requests than it has. A seed request that breaks a limit is first cut into
      ``ceil(tickers / per)`` pieces, ``per = min(max_tickers, max_cells // width)``, or, when
      its ``width`` (columns) exceeds ``min(max_columns, max_cells)``, into column pieces of
      that size each cut the same way; the bound then holds against the seed so cut;
    - the same demand gives the same requests, in the same order, with sorted tickers and
      columns.

    ``screener_of`` is called once per distinct symbol and may raise for an unknown exchange;
    callers are expected to have refused such symbols at subscribe time.
    """
    catalogue, by_screener = _tickers_by_mask(demand, profile_columns, screener_of)
    requests: list[ScanRequest] = []
    for screener, by_mask in by_screener.items():
        mergeable: list[_Group] = []
        final: list[_Group] = []
        for mask, tickers in by_mask.items():
            pieces, fixed = _split(tickers, mask, limits)
            mergeable.extend(pieces)
            final.extend(fixed)
        for budget in _budgets(limits.request_cost):
            mergeable = _merge(mergeable, budget, limits)
        requests.extend(_requests(screener, mergeable + final, catalogue))
    return _ordered(requests)
