"""The scanner client: fetch scan requests from TradingView, survive whatever comes back.

Everything that can go wrong upstream (throttling, blocks, resets, timeouts,
quiet empty bodies) becomes a :class:`ScanError` inside a :class:`ScanResult`;
:meth:`ScannerClient.scan` never raises, because one bad request must not take
a tick, let alone the collector loop, down with it.

Transient failures are retried with full-jitter backoff, each retry leaving
from the next proxy slot (throttling is per source address), within the
caller's deadline so a tick never hangs on retries. Requests that can never
succeed (an unknown column, a bad body, an unknown screener) fail at once.

The pure parts (body building, status classification, response parsing,
backoff, the health summary) are plain functions so they can be tested and
reasoned about without a network.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp
import orjson
from aiohttp_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError

from quartsig import __version__
from quartsig.config import Settings
from quartsig.domain.model import Layout, Row, ScanError, ScanRequest, ScanResult
from quartsig.upstream.proxies import DEFAULT_COOLDOWNS, ProxyPool, ProxySlot

log = logging.getLogger(__name__)

USER_AGENT = f"quartsig/{__version__}"

#: Kinds whose failure says something about the slot (its address), not the request.
SLOT_FAULTS = frozenset({"throttled", "blocked", "timeout", "connection"})
#: Kinds after which a Tor slot should move to a new circuit (a new exit address).
RENEW_FAULTS = frozenset({"throttled", "blocked"})

_UNKNOWN_FIELD = re.compile(r'Unknown field "([^"]*)"')


# --- pure functions -----------------------------------------------------------------------


def build_body(request: ScanRequest) -> bytes:
    """The JSON body. No ``range``: it silently caps the rows returned."""
    return orjson.dumps(
        {
            "symbols": {"tickers": list(request.tickers), "query": {"types": []}},
            "columns": list(request.columns),
        }
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None if absent/garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _error_text(body: bytes) -> str | None:
    """The ``error`` string of a JSON error body, if there is one."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, str) else None


def _snippet(body: bytes, limit: int = 120) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return text + ("..." if len(body) > limit else "")


def classify_status(status: int, body: bytes, retry_after: float | None = None) -> ScanError:
    """The error for a non-200 answer, following scanner-protocol.md's table."""
    text = _error_text(body)
    if status == 400:
        match = _UNKNOWN_FIELD.search(text or "")
        if match:
            return ScanError(
                "bad_column", text or "", retryable=False, status=400, column=match.group(1)
            )
        return ScanError("bad_request", text or f"400: {_snippet(body)}", False, 400)
    if status == 404:
        return ScanError("not_found", "404: unknown screener path", False, 404)
    if status == 429:
        return ScanError("throttled", "429: throttled", True, 429, retry_after=retry_after)
    if status in (403, 503):
        return ScanError(
            "blocked", f"{status}: blocked or unavailable", True, status, retry_after=retry_after
        )
    if status == 408:
        return ScanError("timeout", "408: request timeout", True, 408)
    if status >= 500:
        return ScanError("server", f"{status}: server error", True, status, retry_after=retry_after)
    return ScanError("bad_request", f"{status}: {text or _snippet(body)}", False, status)


@functools.lru_cache(maxsize=256)
def layout_for(columns: tuple[str, ...]) -> Layout:
    """The one layout of every reply to a request for ``columns``.

    A tick asks for the same columns as the one before, so the layout (an index of up to a
    thousand columns) and the pickers it caches for each key's columns are built once and
    reused tick after tick, not rebuilt for every reply (bench.tick: 19 indexes and 190
    pickers a tick, about 3 % of it). Layouts change only by filling that cache. The 256 most
    recent are kept (one of ``full`` over ten timeframes, its biggest, is about 50 KB)."""
    return Layout(columns)


#: Where each row of a reply starts. It cannot occur inside a JSON string (the quote would be
#: escaped there), so splitting a reply on it cuts only at objects whose first key is ``s``.
_ROW: Final = b'{"s":'
#: What comes before the first row in TradingView's replies (and the stand-in's).
_HEAD: Final = re.compile(rb'\{"totalCount":\d+,"data":\[')
#: Replies whose rows :class:`RowCache` keeps (oldest dropped first).
CACHED_REPLIES: Final = 64


#: A row's bytes, its row, and where in those bytes its runs of columns are separated (None
#: when its cells are not all plain: then it is parsed whole when it moves).
_Entry = tuple[bytes, Row, tuple[int, ...] | None]


class RowCache:
    """The rows of the last reply to each request, with their bytes: a row whose bytes did not
    move since then is not parsed again and comes back as the very same :class:`Row`.

    On a 20 s tick most tickers stand still, and parsing is most of what an unchanged row
    costs (orjson makes a float object per cell); comparing its bytes is one ``memcmp``, and
    the composer skips the keys of a row it has already settled from (``is``). Kept per
    request (columns and tickers): an early fetch of a few tickers does not evict a full
    tick's rows. Holds about one tick of reply bytes and rows."""

    def __init__(self, replies: int = CACHED_REPLIES) -> None:
        self.replies = replies
        self._rows: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, _Entry]]
        self._rows = {}
        #: Rows parsed and rows reused, for tests and tools.
        self.parsed = 0
        self.reused = 0

    def parse(
        self, request: ScanRequest, body: bytes
    ) -> tuple[dict[str, Row], frozenset[str]] | ScanError:
        """:func:`parse_body`, reusing the rows whose bytes did not move; the whole body is
        parsed by :func:`parse_body` whenever it is not exactly the shape this expects."""
        place = (request.columns, request.tickers)
        found = _reusing(request, body, self._rows.get(place, {}))
        if found is None:
            self._rows.pop(place, None)
            return parse_body(request, body)
        rows, missing, kept, parsed = found
        self._rows.pop(place, None)
        self._rows[place] = kept  # newest last
        while len(self._rows) > self.replies:
            del self._rows[next(iter(self._rows))]
        self.parsed += parsed
        self.reused += len(kept) - parsed
        return rows, missing


def _row_starts(body: bytes) -> list[int]:
    """Where :data:`_ROW` occurs in ``body`` after its first byte: where a reply's rows start.

    The rows are found and compared in place, not split off: splitting a tick's 15.8 MB
    copied every row's bytes (and searched five-byte patterns), about a fifth of parsing a
    tick where one row in ten moves. Numbers and nulls hold no brace, so the braces are the
    rows' own, found by ``memchr``, 25 times faster; a brace in a cell (an object, or within
    a string) sends this to the search for :data:`_ROW` itself."""
    find, startswith = body.find, body.startswith
    starts = []
    at = find(b"{", 1)
    while at >= 0:
        starts.append(at)
        at = find(b"{", at + 1)
    if all(startswith(_ROW, at) for at in starts):
        return starts
    starts = []
    at = find(_ROW, 1)
    while at >= 0:
        starts.append(at)
        at = find(_ROW, at + len(_ROW))
    return starts


def _reusing(
    request: ScanRequest, body: bytes, known: dict[str, _Entry]
) -> tuple[dict[str, Row], frozenset[str], dict[str, _Entry], int] | None:
    """Rows of ``body``, each the bytes from one :data:`_ROW` to the next (its comma left
    out), parsing only those whose bytes are not in ``known`` and copying no other; None when
    the body is not exactly ``{"totalCount":N,"data":[rows]}`` with every row an object whose
    ``s`` is a plain string, or a row is not what :func:`parse_body` would accept (it then
    parses the whole body and says why).

    A moved row whose last bytes are known is compared run of columns by run (one run per
    timeframe, see :attr:`Layout.blocks`): only the runs that moved are parsed, the other
    cells are the last row's objects, and the row says which runs moved (:attr:`Row.moved`)."""
    starts = _row_starts(body)
    if not starts or not _HEAD.fullmatch(body, 0, starts[0]) or not body.endswith(b"}]}"):
        return None
    last = len(body) - 2  # the last row ends before "]}", every other one before ","
    stops = [at - 1 for at in starts[1:]]
    stops.append(last)
    startswith, find = body.startswith, body.find
    kept: dict[str, _Entry] = {}
    order: list[tuple[str, _Entry | None]] = []  # None: its bytes moved (or are new)
    fresh: list[tuple[str, int, int]] = []
    for start, stop in zip(starts, stops, strict=True):
        end = find(b'"', start + 6, stop)
        if (not startswith(b'{"s":"', start) or end < 0
                or (stop != last and not startswith(b"},", stop - 1))):
            return None
        name = body[start + 6:end]
        if b"\\" in name or not name.isascii():
            return None
        ticker = name.decode()
        old = known.get(ticker)
        if old is not None and len(old[0]) == stop - start and startswith(old[0], start):
            order.append((ticker, old))  # the same bytes: the same row
        else:
            order.append((ticker, None))
            fresh.append((ticker, start, stop))
    if len({ticker for ticker, _ in order}) != len(order):
        return None  # a ticker twice: the whole parse keeps the later one
    wanted = set(request.tickers)
    width = len(request.columns)
    layout = layout_for(request.columns)
    parsed: dict[str, _Entry] = {}
    loads = orjson.loads
    for ticker, start, stop in fresh:
        piece = body[start:stop]
        old = known.get(ticker)
        if (ticker in wanted and (old is None or (old[2] is None and _narrow(old[0], piece)))
                and min(piece[6:6 + len(ticker)], default=32) >= 32):  # as loads would check
            # New (or moved within, last time parsed whole): parsed run by run (twice one
            # loads), so where its runs of columns end is known for its next move.
            made = _separators_and_cells(piece, layout)
            if made is not None:
                parsed[ticker] = (piece, Row(layout, None, runs=made[1]), made[0])
                continue
        elif old is not None and old[2] is not None and ticker in wanted:
            found = _moved_row(body, start, stop, old, layout)
            if found is not None:
                parsed[ticker] = (piece, found[0], found[1])
                continue
        # One row at a time, made a Row at once: its cells become a tuple (a copy of 910
        # references, each incremented) while the floats orjson just made are still in the
        # cache, not after one loads of all the moved rows.
        try:
            item = loads(piece)
        except orjson.JSONDecodeError:
            return None  # the whole parse says why
        if not isinstance(item, dict) or item.get("s") != ticker:
            return None  # e.g. a second "s" key: the whole parse decides
        values = item.get("d")
        if ticker not in wanted:
            parsed[ticker] = (piece, Row(layout, ()), None)  # only its shape was checked
        elif isinstance(values, list) and len(values) == width:
            parsed[ticker] = (piece, Row(layout, tuple(values)), None)  # see Row.cells
        else:
            return None
    rows: dict[str, Row] = {}
    for ticker, same in order:
        entry = parsed[ticker] if same is None else same
        kept[ticker] = entry
        if ticker in wanted:
            rows[ticker] = entry[1]
    return rows, frozenset(wanted - rows.keys()), kept, len(parsed)


def _plain(body: bytes, begin: int, end: int) -> bool:
    """No string, array or object in ``body[begin:end]``: its commas separate cells."""
    return body.find(b'"', begin, end) < 0 and body.find(b"[", begin, end) < 0 \
        and body.find(b"{", begin, end) < 0


def _narrow(old: bytes, new: bytes) -> bool:
    """Whether a row's bytes moved only within: the first and the last tenth stand still."""
    tenth = min(len(old), len(new)) // 10
    return new.startswith(old[:tenth]) and new.endswith(old[len(old) - tenth:])


#: A run's guessed length is its last length plus this fraction (1/_SLACK): a cell short of
#: the guess costs a ``loads`` and a ``find`` of its own, a cell past it one ``rfind``.
_SLACK: Final = 40


def _run_values(
    body: bytes, at: int, end: int, size: int, guess: int
) -> tuple[list[Any], int] | None:
    """The values of the run of ``size`` plain cells from ``at``, and where the comma closing
    it lies (``end`` for a row's last run, closed by its bracket); None when they are not
    there or do not parse.

    Cells are not tokenized, nor counted: the bytes up to a comma near a guess of the run's
    end (``guess``: its length with its closing comma, e.g. the last row's run's) are parsed
    (in C), and their number of values says how many commas on it is (a few ``find`` or
    ``rfind``). Counting the commas of a row with ``bytes.count`` took as long as parsing it."""
    near = min(at + max(guess, 1), end)
    comma = end if near >= end else body.rfind(b",", at, near)
    if comma < 0:
        comma = body.find(b",", at, end)
        if comma < 0:
            comma = end
    try:
        values = orjson.loads(b"[" + body[at:comma] + b"]")
        if not isinstance(values, list) or not values:
            return None  # an empty cell (which one loads refuses) or a run of none
        # A JSON array has no empty element: its values are its commas + 1 (none nested).
        while len(values) < size:
            if comma >= end:
                return None
            following = body.find(b",", comma + 1, end)
            if following < 0:
                following = end
            values.append(orjson.loads(body[comma + 1:following]))
            comma = following
    except orjson.JSONDecodeError:
        return None
    if len(values) > size:
        for _ in range(len(values) - size):
            comma = body.rfind(b",", at, comma)
        del values[size:]
    return values, comma


def _separators_and_cells(
    row: bytes, layout: Layout
) -> tuple[tuple[int, ...], tuple[tuple[Any, ...], ...]] | None:
    """Where ``row`` (``{"s":"T","d":[cells]}``) opens its cells, each comma between two runs
    of :attr:`Layout.blocks` and where it closes them, and its cells, parsed run by run;
    None when it is not that shape or a cell is not plain (a number, null, true or false)."""
    blocks = layout.blocks
    opening = row.find(b'"', 6) + 6  # after the ticker (a plain string: no escaped quote)
    if (opening < 6 or not row.startswith(b'","d":[', opening - 6) or not blocks
            or not row.endswith(b"]}")):
        return None
    closing = len(row) - 2
    if not _plain(row, opening + 1, closing):
        return None
    per_cell = (closing - opening) / len(layout.columns)
    found = [opening]
    runs: list[tuple[Any, ...]] = []
    for start, stop in blocks:
        run = _run_values(row, found[-1] + 1, closing, stop - start,
                          round((stop - start) * per_cell * (_SLACK + 1) / _SLACK))
        if run is None:
            return None
        runs.append(tuple(run[0]))
        found.append(run[1])
    if found[-1] != closing:
        return None
    return tuple(found), tuple(runs)


def _moved_row(
    body: bytes, start: int, stop: int, old: _Entry, layout: Layout
) -> tuple[Row, tuple[int, ...]] | None:
    """The row in ``body[start:stop]`` from the last one (``old``, whose separators are
    known), parsing only its runs of columns whose bytes moved; None to parse it whole.

    The runs that did not move are found from both ends: the new bytes match the old from
    the front up to the first run that moved and from the back down to the last one, at the
    same distance from the row's start or end (each run compared with its separators, so a
    run matched is the same run). Between those, the runs are found by counting plain cells
    (a regular expression, in C) and compared one by one. Only whole rows of plain cells
    (numbers, null, true, false) take this path, checked as for a new row."""
    old_bytes, old_row, seps = old
    if seps is None:
        return None
    blocks = layout.blocks
    count = len(blocks)
    startswith = body.startswith
    opening = seps[0]
    if not startswith(old_bytes[:opening + 1], start) or not startswith(b"]}", stop - 2):
        return None
    first = 0
    while first < count and startswith(old_bytes[seps[first] + 1:seps[first + 1] + 1],
                                       start + seps[first] + 1):
        first += 1
    if first == count:
        return None  # the same cells, other bytes after them: parsed whole
    shift = (stop - start) - len(old_bytes)
    last = count - 1
    while last > first and startswith(old_bytes[seps[last]:seps[last + 1]],
                                      start + shift + seps[last]):
        last -= 1
    if first == 0 and last == count - 1 and count > 2:
        return None  # moved at both ends (TradingView's: every timeframe): one loads is faster
    # Runs first..last: where they are separated now, all of them plain cells, or parse whole.
    # Walked from the front: a run whose bytes and closing comma are the old run's is that
    # run (as above); a moved run's closing comma is counted. The last one's is known.
    begin, end = start + seps[first] + 1, start + shift + seps[last + 1]
    if end <= begin or not _plain(body, begin, end):
        return None
    inner: list[int] = []
    moved: list[int] = []
    spans: list[list[Any]] = []  # the values of each moved run
    at = begin
    for run in range(first, last + 1):
        low, high = blocks[run]
        old_run = old_bytes[seps[run] + 1:seps[run + 1] + 1]
        if run != first and run != last and startswith(old_run, at):
            comma = at + len(old_run) - 1
        else:
            found = _run_values(body, at, end, high - low, len(old_run) * (_SLACK + 1) // _SLACK)
            if found is None:
                return None
            values, comma = found
            spans.append(values)
            moved.append(run)
        if run != last:
            inner.append(comma - start)
        elif comma != end:
            return None
        at = comma + 1
    new = (*seps[:first + 1], *inner, *(at + shift for at in seps[last + 1:]))
    runs = old_row.runs
    if runs is None:
        return None
    made = list(runs)
    for run, values in zip(moved, spans, strict=True):
        made[run] = tuple(values)
    old_row.since = None  # the composer is done with the row before it: no chain
    mask = 0
    for run in moved:
        mask |= 1 << run
    return Row(layout, None, old_row, mask, tuple(made)), new


def parse_body(
    request: ScanRequest, body: bytes
) -> tuple[dict[str, Row], frozenset[str]] | ScanError:
    """Rows by ticker from a 200 body, matched by ``"s"``, never by position.

    An empty or non-JSON 200 is TradingView throttling quietly (retryable); JSON
    of the wrong shape will not improve on a retry (not retryable).
    """
    if not body.strip():
        return ScanError("throttled", "200 with an empty body (quiet throttling)", True, 200)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ScanError("bad_body", f"200 with a non-JSON body: {_snippet(body)!r}", True, 200)
    if not isinstance(payload, dict):
        return ScanError("bad_body", "200 body is not a JSON object", False, 200)
    data = payload.get("data")
    if data is None and isinstance(payload.get("error"), str):
        return ScanError("bad_request", payload["error"], False, 200)
    if not isinstance(data, list):
        return ScanError("bad_body", "200 body has no data list", False, 200)
    wanted = set(request.tickers)
    width = len(request.columns)
    layout = layout_for(request.columns)
    rows: dict[str, Row] = {}
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("s"), str):
            return ScanError("bad_body", "a row without an \"s\" string", False, 200)
        ticker = item["s"]
        if ticker not in wanted:
            continue
        values = item.get("d")
        if not isinstance(values, list) or len(values) != width:
            got = len(values) if isinstance(values, list) else type(values).__name__
            return ScanError(
                "bad_body", f"row {ticker}: d has {got} values for {width} columns", False, 200
            )
        rows[ticker] = Row(layout, values)
    return rows, frozenset(wanted - rows.keys())


def backoff_delay(
    retry: int,
    retry_delays: Sequence[float],
    error: ScanError,
    rng: random.Random,
    max_retry_after: float,
) -> float:
    """Seconds before retry number ``retry`` (0-based): full jitter, at least ``Retry-After``.

    Full jitter (uniform in [0, cap]) keeps concurrent requests from retrying in
    lock-step; ``Retry-After`` is honoured but capped, so a server asking for an
    hour cannot stall the collector for an hour.
    """
    cap = retry_delays[min(retry, len(retry_delays) - 1)] if retry_delays else 0.0
    delay = rng.uniform(0.0, cap)
    if error.retry_after is not None:
        delay = max(delay, min(error.retry_after, max_retry_after))
    return delay


def summarise(results: Iterable[ScanResult]) -> tuple[str, str]:
    """Upstream health from one tick's results: ("ok"|"degraded"|"down", reason).

    ``down``: every request failed, nobody got fresh data. ``degraded``: some
    failed. ``ok``: all succeeded, even if some needed retries: retries that
    worked cost latency, not data, and flagging them would make health flap on
    every stray 429 (the reason still mentions them, and attempts are counted
    in metrics). Unknown tickers are the caller's problem, not upstream's.
    """
    results = list(results)
    if not results:
        return "ok", "no requests"
    failed = [result for result in results if not result.ok]
    if failed:
        kinds = Counter(result.error.kind for result in failed if result.error)
        detail = ", ".join(f"{kind} x{count}" for kind, count in sorted(kinds.items()))
        if len(failed) == len(results):
            return "down", f"all {len(results)} requests failed ({detail})"
        return "degraded", f"{len(failed)} of {len(results)} requests failed ({detail})"
    retried = sum(1 for result in results if result.attempts > 1)
    if retried:
        return "ok", f"{len(results)} requests ok ({retried} after retries)"
    return "ok", f"{len(results)} requests ok"


# --- the async shell ----------------------------------------------------------------------


class ScannerClient:
    """Fetches scan requests with bounded concurrency, retries, and proxy rotation.

    ``concurrency`` bounds HTTP requests in flight and ``min_start_interval``
    spaces their starts; both apply to every attempt, retries included, since
    TradingView sees attempts, not logical requests.
    """

    def __init__(
        self,
        base_url: str,
        *,
        proxies: Sequence[str] = (),
        concurrency: int = 4,
        timeout: float = Settings.scanner_timeout,  # the default lives in config
        retry_delays: Sequence[float] = (0.5, 1.5, 4.0),
        min_start_interval: float = 0.0,
        headers: Mapping[str, str] | None = None,
        tor_isolation: bool = False,
        max_retry_after: float = 30.0,
        proxy_cooldowns: Sequence[float] = DEFAULT_COOLDOWNS,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry_delays = tuple(retry_delays)
        self.min_start_interval = min_start_interval
        self.max_retry_after = max_retry_after
        self.headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        self.headers.update(headers or {})
        self._rng = rng or random.Random()
        self._pool = ProxyPool(
            proxies, self._new_session, tor_isolation=tor_isolation, cooldowns=proxy_cooldowns
        )
        self._semaphore: asyncio.Semaphore | None = None
        self._gate: asyncio.Lock | None = None
        self._next_start = 0.0
        #: The last replies' rows: an unchanged row is neither parsed nor picked again.
        self.rows = RowCache()

    @property
    def slots(self) -> list[ProxySlot]:
        return self._pool.slots

    @property
    def sessions(self) -> list[aiohttp.ClientSession]:
        """Open sessions: one per slot (plus Tor circuits being retired)."""
        return self._pool.sessions

    @property
    def started(self) -> bool:
        return self._semaphore is not None

    async def start(self) -> None:
        if self.started:
            return
        self._semaphore = asyncio.Semaphore(self.concurrency)
        self._gate = asyncio.Lock()
        self._pool.start()

    async def close(self) -> None:
        await self._pool.close()
        self._semaphore = None
        self._gate = None

    async def __aenter__(self) -> ScannerClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def scan_all(
        self, requests: Iterable[ScanRequest], *, deadline: float | None = None,
        retry: bool = True,
    ) -> list[ScanResult]:
        """Every request, concurrently within the client's bounds; results in request order.

        Once an address is throttled or blocked, no attempt of these requests starts from it
        (no retry, none of the requests still queued): asking again at once only extends the
        throttle, and the collector's backoff decides when to knock next."""
        halted: set[ProxySlot] = set()
        return list(await asyncio.gather(
            *(self.scan(r, deadline=deadline, retry=retry, halted=halted) for r in requests)
        ))

    async def scan(
        self, request: ScanRequest, *, deadline: float | None = None, retry: bool = True,
        halted: set[ProxySlot] | None = None,
    ) -> ScanResult:
        """One request with retries; never raises (but lets cancellation through).

        ``deadline`` is a ``time.monotonic()`` instant: no attempt runs past it
        and no backoff sleeps across it; the last error is returned instead.
        ``retry=False``: one attempt only (a probe while the collector backs off).
        ``halted``: slots not to send from (shared by a tick's requests); a slot that is
        throttled or blocked joins it.
        """
        retries = len(self.retry_delays) if retry else 0
        started = time.monotonic()
        if not self.started:
            await self.start()
        body = build_body(request)
        url = f"{self.base_url}/{request.screener}/scan"
        attempts = 0
        slot: ProxySlot | None = None
        error: ScanError | None = None
        for attempt in range(retries + 1):
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                error = _deadline_error(error)
                break
            slot = self._pool.choose(avoid=slot)
            if halted is not None and slot in halted:
                error = error or _halted(slot)
                break
            hold = slot.held_until - time.monotonic()
            if hold > 0:
                # The upstream asked this address to wait (Retry-After): never ask sooner,
                # not even from the next tick.
                if remaining is not None and hold >= remaining:
                    error = error or ScanError(
                        "throttled", f"honouring Retry-After on {slot.label}", True, 429
                    )
                    break
                await asyncio.sleep(hold)
                remaining = _remaining(deadline)
            outcome = await self._attempt(slot, url, body, request, remaining, halted)
            if outcome is _HALTED:  # throttled while this one queued: never sent
                error = error or _halted(slot)
                break
            if outcome is _NO_TURN:
                # The deadline passed while queueing for a turn: no request was made,
                # so nothing is held against the slot.
                error = _deadline_error(error)
                break
            attempts += 1
            if not isinstance(outcome, ScanError):
                self._pool.succeeded(slot)
                rows, missing = outcome
                return ScanResult(
                    request, rows, missing, None, attempts, time.monotonic() - started
                )
            error = outcome
            if halted is not None and error.kind in RENEW_FAULTS:
                halted.add(slot)
            if error.kind in SLOT_FAULTS:
                await self._pool.failed(
                    slot,
                    renew=error.kind in RENEW_FAULTS,
                    retry_after=None if error.retry_after is None
                    else min(error.retry_after, self.max_retry_after),
                )
            if not error.retryable or attempt == retries:
                break
            delay = backoff_delay(
                attempt, self.retry_delays, error, self._rng, self.max_retry_after
            )
            remaining = _remaining(deadline)
            if remaining is not None and delay >= remaining:
                log.warning(
                    "scan %s: %s; no time left for a retry before the deadline",
                    request.screener, error.message,
                )
                break
            log.warning(
                "scan %s via %s: %s; retry %d in %.2fs",
                request.screener, slot.label, error.message, attempt + 1, delay,
            )
            await asyncio.sleep(delay)
        assert error is not None
        return ScanResult(request, {}, frozenset(), error, attempts, time.monotonic() - started)

    async def _attempt(
        self,
        slot: ProxySlot,
        url: str,
        body: bytes,
        request: ScanRequest,
        remaining: float | None,
        halted: set[ProxySlot] | None = None,
    ) -> tuple[dict[str, Row], frozenset[str]] | ScanError:
        """One HTTP exchange, every failure turned into a :class:`ScanError`."""
        assert self._semaphore is not None
        budget = self.timeout if remaining is None else min(self.timeout, remaining)
        try:
            async with asyncio.timeout(_remaining_or_none(remaining)):
                await self._semaphore.acquire()
        except TimeoutError:
            return _NO_TURN
        try:
            try:
                async with asyncio.timeout(_remaining_or_none(remaining)):
                    await self._wait_turn()
            except TimeoutError:
                return _NO_TURN
            if halted is not None and slot in halted:
                return _HALTED
            spent = time.monotonic()
            budget = budget if remaining is None else min(budget, max(remaining, 0.001))
            client_timeout = aiohttp.ClientTimeout(total=budget, sock_connect=budget)
            async with (
                self._pool.lease(slot) as session,
                session.post(url, data=body, headers=self.headers, timeout=client_timeout) as resp,
            ):
                raw = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (TimeoutError, ProxyTimeoutError, aiohttp.ServerTimeoutError):
            return ScanError(
                "timeout", f"no answer within {budget:.1f}s via {slot.label}", retryable=True
            )
        except (aiohttp.ClientError, ProxyConnectionError, ProxyError, OSError) as exc:
            return ScanError("connection", _describe(exc, slot), retryable=True)
        except Exception as exc:  # the contract is "never raises": report, do not retry
            log.error("scan %s via %s: unexpected %s", request.screener, slot.label,
                      type(exc).__name__)
            return ScanError("connection", _describe(exc, slot), retryable=False)
        finally:
            self._semaphore.release()
        log.debug(
            "scan %s via %s: %d in %.3fs (%d cells)",
            request.screener, slot.label, status, time.monotonic() - spent, request.cells,
        )
        if status != 200:
            return classify_status(status, raw, retry_after)
        return self.rows.parse(request, raw)

    async def _wait_turn(self) -> None:
        """Space attempt starts by ``min_start_interval``, across all concurrent scans."""
        if self.min_start_interval <= 0:
            return
        assert self._gate is not None
        async with self._gate:
            wait = self._next_start - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_start = time.monotonic() + self.min_start_interval

    def _new_session(self, connector: aiohttp.BaseConnector | None) -> aiohttp.ClientSession:
        # raise_for_status off: statuses are classified, not raised; cookies are not wanted.
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False
        )


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _remaining_or_none(remaining: float | None) -> float | None:
    return None if remaining is None else max(remaining, 0.0)


_NO_TURN = ScanError("timeout", "the tick's deadline passed before the request ran", True)


#: Marks an attempt not made because its slot was throttled meanwhile (``scan``'s ``halted``).
_HALTED = ScanError("throttled", "not sent: throttled meanwhile", True, 429)


def _halted(slot: ProxySlot) -> ScanError:
    return ScanError("throttled", f"not sent: {slot.label} was just throttled", True, 429)


def _deadline_error(last: ScanError | None) -> ScanError:
    """The deadline passed: report what went wrong before, if anything did."""
    return _NO_TURN if last is None else last


def _describe(exc: BaseException, slot: ProxySlot) -> str:
    """A one-line, credential-free description of a transport failure."""
    text = str(exc) or type(exc).__name__
    return slot.scrub(f"{type(exc).__name__} via {slot.label}: {text}")
