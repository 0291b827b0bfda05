"""The demo scanner: :class:`~quartsig.demo.market.Market` behind TradingView's scan endpoint.

It follows ``shared/scanner-protocol.md`` as closely as we know it, because a
stand-in that is kinder than production teaches the client nothing: bodies
and column names are validated with TradingView's error shapes, unknown or
wrong-screener tickers are left out, rows come back shuffled, volume-based
forex fields and ratings of symbols without technicals are null.

This is what ``quartsig serve --demo`` talks to (:func:`serve_standin`): the
scan route only, stepping the market every ``step_every`` seconds. The fault
knobs and request log tests drive over HTTP live in ``tests/support/standin.py``,
which builds on this module; nothing here can be told to misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from quartsig.demo.market import Market
from quartsig.domain.columns import KNOWN_COLUMNS
from quartsig.domain.timeframes import SUFFIXES

#: Suffix -> timeframe, for the suffixes TradingView accepts ("|1D" is not one).
_TIMEFRAME_BY_SUFFIX = {suffix: tf for tf, suffix in SUFFIXES.items()}


def parse_columns(columns: Sequence[str]) -> list[tuple[str, str]] | str:
    """``"RSI|5"`` -> ``("RSI", "5m")`` for each column, or the first unknown field's name."""
    parsed = []
    for name in columns:
        base, bar, suffix = name.partition("|")
        timeframe = _TIMEFRAME_BY_SUFFIX.get(bar + suffix) if (suffix or not bar) else None
        if base not in KNOWN_COLUMNS or timeframe is None or (bar and not suffix):
            return name
        parsed.append((base, timeframe))
    return parsed


def validate_body(payload: Any) -> tuple[list[str], list[str]] | str:
    """``(tickers, columns)`` from a scan body, or the error TradingView would give."""
    if not isinstance(payload, dict):
        return "request body must be a JSON object"
    symbols = payload.get("symbols")
    if not isinstance(symbols, dict):
        return "symbols: expected an object with a tickers list"
    tickers = symbols.get("tickers")
    if not isinstance(tickers, list) or not all(isinstance(t, str) for t in tickers):
        return "symbols.tickers: expected a list of strings"
    query = symbols.get("query")
    if query is not None:
        if not isinstance(query, dict):
            return "symbols.query: expected an object"
        types = query.get("types", [])
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            return "symbols.query.types: expected a list of strings"
    columns = payload.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        return "columns: expected a list of strings"
    for key in ("filter", "sort", "range", "options", "markets"):
        if key in payload and not isinstance(payload[key], dict | list):
            return f"{key}: malformed"
    return tickers, columns


def error_body(message: str) -> bytes:
    return orjson.dumps({"totalCount": 0, "error": message, "data": None})


@dataclass(slots=True)
class ScannerConfig:
    change_share: float = 0.3  # share of (ticker, timeframe) cells that move per step
    step_every: float | None = None  # seconds between automatic steps; None: only on request

    def update(self, changes: Mapping[str, Any]) -> None:
        unknown = set(changes) - {"change_share", "step_every"}
        if unknown:
            raise ValueError(f"unknown setting(s): {sorted(unknown)}")
        share = float(changes.get("change_share", self.change_share))
        every = changes.get("step_every", self.step_every)
        if not 0 <= share <= 1 or (every is not None and float(every) <= 0):
            raise ValueError("change_share in [0, 1], step_every > 0 or null")
        self.change_share = share
        self.step_every = None if every is None else float(every)


class DemoScanner(Market):
    """The market plus what a scan endpoint adds: settings, and answers to scan bodies."""

    def __init__(
        self,
        *,
        seed: int = 0,
        universe: Mapping[str, Iterable[str]] | None = None,
        config: ScannerConfig | None = None,
    ) -> None:
        super().__init__(seed=seed, universe=universe)
        self.config = config or ScannerConfig()
        self.config_changed = asyncio.Event()
        self._scans = 0

    def step(self, count: int = 1, change_share: float | None = None) -> int:
        """Advance every series by ``count`` bars (by default at the configured share)."""
        share = self.config.change_share if change_share is None else change_share
        return super().step(count, share)

    def answer(self, screener: str, payload: Any) -> tuple[int, bytes, int]:
        """``(status, body, rows)`` for a scan; pure apart from reading values."""
        if screener not in self.universe:
            return 404, b"404 page not found", 0
        checked = validate_body(payload)
        if isinstance(checked, str):
            return 400, error_body(checked), 0
        tickers, columns = checked
        parsed = parse_columns(columns)
        if isinstance(parsed, str):
            return 400, error_body(f'Unknown field "{parsed}"'), 0
        known = self.universe[screener]
        wanted = [t for t in dict.fromkeys(tickers) if t in known]
        self._scans += 1
        random.Random(f"{self.seed}|shuffle|{self._scans}").shuffle(wanted)
        timeframes = {timeframe for _, timeframe in parsed}
        data = []
        for ticker in wanted:
            by_tf = {timeframe: self.values(ticker, timeframe) for timeframe in timeframes}
            data.append({"s": ticker, "d": [by_tf[tf][base] for base, tf in parsed]})
        return 200, orjson.dumps({"totalCount": len(data), "data": data}), len(data)


SCANNER = web.AppKey("scanner", DemoScanner)

#: A scan route handler: ``POST /{screener}/scan``.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_scan(request: web.Request) -> tuple[bytes, Any]:
    """The raw body of a scan request and its JSON (None when it is not JSON)."""
    raw = await request.read()
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw, None


def scan_response(state: DemoScanner, screener: str, raw: bytes, payload: Any
                  ) -> tuple[web.Response, int]:
    """The answer to one scan body, and how many rows it carries."""
    if payload is None and raw.strip():
        status, body, rows = 400, error_body("request body is not valid JSON"), 0
    else:
        status, body, rows = state.answer(screener, payload)
    content_type = "text/plain" if status == 404 else "application/json"
    return web.Response(status=status, body=body, content_type=content_type), rows


async def _scan(request: web.Request) -> web.StreamResponse:
    raw, payload = await read_scan(request)
    response, _ = scan_response(request.app[SCANNER], request.match_info["screener"], raw, payload)
    return response


async def _auto_step(app: web.Application) -> Any:
    """Step every ``step_every`` seconds while it is set; wake when the config changes."""
    state = app[SCANNER]

    async def loop() -> None:
        while True:
            state.config_changed.clear()
            every = state.config.step_every
            try:
                async with asyncio.timeout(every):
                    await state.config_changed.wait()
            except TimeoutError:
                state.step()

    task = asyncio.get_running_loop().create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_scanner_app(
    state: DemoScanner | None = None,
    *,
    scan: Handler = _scan,
    seed: int = 0,
    universe: Mapping[str, Iterable[str]] | None = None,
    change_share: float = 0.3,
    step_every: float | None = None,
) -> web.Application:
    """The scanner as an aiohttp application; its state is ``app[SCANNER]``.

    ``state`` and ``scan`` let the test stand-in put its own state (a subclass) and
    route in; otherwise a :class:`DemoScanner` is made from the other options.
    """
    if state is None:
        config = ScannerConfig()
        config.update({"change_share": change_share, "step_every": step_every})
        state = DemoScanner(seed=seed, universe=universe, config=config)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SCANNER] = state
    app.cleanup_ctx.append(_auto_step)
    app.router.add_post("/{screener}/scan", scan)
    return app


async def serve_standin(
    host: str = "127.0.0.1", port: int = 0, *, app: web.Application | None = None, **options: Any
) -> tuple[web.AppRunner, str]:
    """Serve the scanner in this process; returns the runner (``await runner.cleanup()``) and
    its URL. ``options`` go to :func:`create_scanner_app` when no ``app`` is given.
    """
    # handler_cancellation: a client that gave up on a slow answer frees its handler, so
    # shutting down never waits out a long delay (the test stand-in's ``delay`` fault).
    runner = web.AppRunner(
        app or create_scanner_app(**options),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"
