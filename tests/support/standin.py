"""The test stand-in scanner: the demo scanner plus fault knobs and a request log.

:mod:`quartsig.demo.scanner` is the protocol-faithful scan endpoint over the simulated
market; this adds what tests and benchmarks need and ``--demo`` must not expose:
fault knobs (429 bursts, 403/5xx, empty and non-JSON 200s, delays, dropped
connections) queued over HTTP so a test in another process can drive them, a
``base_delay`` before every answer, pinned values, explicit steps, and a log of
every scan request for counting requests and cells. Run it on its own with::

    python -m tests.support.standin --port 0 [--seed 0] [--step-every S] ...
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web

from quartsig.demo import scanner as demo
from quartsig.demo.market import synthetic_universe
from quartsig.demo.scanner import DemoScanner, ScannerConfig, error_body

FAULT_KINDS = frozenset({"status", "empty", "garbage", "delay", "reset"})


@dataclass(slots=True)
class Fault:
    """A misbehaviour to apply to upcoming scan requests (see :meth:`Standin.add_faults`)."""

    kind: str
    status: int = 503
    retry_after: float | str | None = None
    body: str | None = None
    seconds: float = 0.0
    delay: float = 0.0
    count: int = 1
    sticky: bool = False

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> Fault:
        if not isinstance(item, Mapping) or item.get("kind") not in FAULT_KINDS:
            raise ValueError(f"each fault needs a kind among {sorted(FAULT_KINDS)}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(item) - known
        if unknown:
            raise ValueError(f"unknown fault field(s): {sorted(unknown)}")
        fault = cls(**item)
        if fault.kind == "delay" and not fault.seconds:
            fault.seconds, fault.delay = fault.delay, 0.0
        if fault.count < 1 or not 100 <= int(fault.status) <= 599:
            raise ValueError("count must be >= 1 and status an HTTP status code")
        return fault



@dataclass(slots=True)
class StandinConfig(ScannerConfig):
    base_delay: float = 0.0  # seconds added before every scan answer

    def update(self, changes: Mapping[str, Any]) -> None:
        rest = dict(changes)
        delay = float(rest.pop("base_delay", self.base_delay))
        if delay < 0:
            raise ValueError("change_share in [0, 1], base_delay >= 0, step_every > 0 or null")
        ScannerConfig.update(self, rest)  # (no zero-argument super() in a slots dataclass)
        self.base_delay = delay


@dataclass(slots=True)
class LoggedRequest:
    screener: str
    tickers: list[str]
    columns: list[str]
    time: float
    peer: str | None
    user_agent: str | None = None
    outcome: str = "pending"
    status: int | None = None
    rows: int = 0
    finished: float | None = None

    @property
    def cells(self) -> int:
        return len(self.tickers) * len(self.columns)


class Standin(DemoScanner):
    """The stand-in's state: the demo scanner's, plus faults and the request log."""

    config: StandinConfig

    def __init__(
        self,
        *,
        seed: int = 0,
        universe: Mapping[str, Iterable[str]] | None = None,
        config: StandinConfig | None = None,
    ) -> None:
        super().__init__(seed=seed, universe=universe, config=config or StandinConfig())
        self.faults: deque[Fault] = deque()
        self.log: list[LoggedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0

    # faults and log ------------------------------------------------------------------------

    def add_faults(self, faults: Iterable[Fault | Mapping[str, Any]]) -> None:
        self.faults.extend(f if isinstance(f, Fault) else Fault.from_json(f) for f in faults)

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self) -> Fault | None:
        """The fault for this request: the queue's head, consumed unless sticky."""
        if not self.faults:
            return None
        fault = self.faults[0]
        if not fault.sticky:
            fault.count -= 1
            if fault.count <= 0:
                self.faults.popleft()
        return fault

    def clear_log(self) -> None:
        self.log.clear()
        self.max_in_flight = self.in_flight

    def stats(self) -> dict[str, Any]:
        return {
            "step": self.step_count, "requests": len(self.log), "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight, "faults": len(self.faults),
        }  # fmt: skip


STANDIN = web.AppKey("standin", Standin)


def standin_state(app: web.Application) -> Standin:
    return app[STANDIN]


def _peer(request: web.Request) -> str | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else None



async def _scan(request: web.Request) -> web.StreamResponse:
    state = request.app[STANDIN]
    screener = request.match_info["screener"]
    raw, payload = await demo.read_scan(request)
    symbols = payload.get("symbols") if isinstance(payload, dict) else None
    tickers = symbols.get("tickers") if isinstance(symbols, dict) else None
    columns = payload.get("columns") if isinstance(payload, dict) else None
    entry = LoggedRequest(
        screener=screener,
        tickers=list(tickers) if isinstance(tickers, list) else [],
        columns=list(columns) if isinstance(columns, list) else [],
        time=time.time(),
        peer=_peer(request),
        user_agent=request.headers.get("User-Agent"),
    )
    state.log.append(entry)
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        fault = state.take_fault()
        delay = state.config.base_delay + (fault.delay + fault.seconds if fault else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None and fault.kind != "delay":
            entry.outcome = f"fault:{fault.kind}"
            return _faulty(request, fault, entry)
        response, entry.rows = demo.scan_response(state, screener, raw, payload)
        entry.status = status = response.status
        entry.outcome = {200: "ok", 400: "bad_request", 404: "not_found"}.get(status, str(status))
        return response
    finally:
        state.in_flight -= 1
        entry.finished = time.time()



def _faulty(request: web.Request, fault: Fault, entry: LoggedRequest) -> web.StreamResponse:
    if fault.kind == "reset":
        # Drop the connection without a byte of answer, as an overloaded edge does.
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    if fault.kind == "empty":
        entry.status = 200
        return web.Response(status=200, body=b"", content_type="application/json")
    if fault.kind == "garbage":
        entry.status = 200
        body = "<html><body>Just a moment...</body></html>" if fault.body is None else fault.body
        return web.Response(status=200, text=body, content_type="text/html")
    entry.status = fault.status
    headers = {} if fault.retry_after is None else {"Retry-After": _retry_after(fault.retry_after)}
    if fault.body is not None:
        return web.Response(status=fault.status, text=fault.body, headers=headers)
    body = error_body(f"{fault.status}") if fault.status < 500 else b"upstream unavailable"
    return web.Response(status=fault.status, body=body, headers=headers)


def _retry_after(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


async def _json(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="body must be JSON") from None


def _reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def _post_faults(request: web.Request) -> web.Response:
    state = request.app[STANDIN]
    payload = await _json(request)
    items = payload if isinstance(payload, list) else [payload]
    try:
        faults = [Fault.from_json(item) for item in items]
    except (TypeError, ValueError) as error:
        return _reply({"error": str(error)}, 400)
    state.add_faults(faults)
    return _reply({"queued": len(state.faults)})


async def _get_faults(request: web.Request) -> web.Response:
    return _reply([asdict(f) for f in request.app[STANDIN].faults])


async def _delete_faults(request: web.Request) -> web.Response:
    request.app[STANDIN].clear_faults()
    return _reply({"queued": 0})


async def _get_requests(request: web.Request) -> web.Response:
    state = request.app[STANDIN]
    return _reply([asdict(entry) | {"cells": entry.cells} for entry in state.log])


async def _delete_requests(request: web.Request) -> web.Response:
    request.app[STANDIN].clear_log()
    return _reply({"requests": 0})


async def _get_stats(request: web.Request) -> web.Response:
    return _reply(request.app[STANDIN].stats())


async def _post_step(request: web.Request) -> web.Response:
    state = request.app[STANDIN]
    count = 1
    if await request.read():
        payload = await _json(request)
        count = int(payload.get("count", 1)) if isinstance(payload, dict) else 1
    return _reply({"step": state.step(max(1, count))})


async def _config(request: web.Request) -> web.Response:
    state = request.app[STANDIN]
    if request.method == "POST":
        payload = await _json(request)
        try:
            if not isinstance(payload, dict):
                raise ValueError("expected an object")
            state.config.update(payload)
        except (TypeError, ValueError) as error:
            return _reply({"error": str(error)}, 400)
        state.config_changed.set()
    return _reply(asdict(state.config))


async def _values(request: web.Request) -> web.Response:
    state = request.app[STANDIN]
    if request.method == "DELETE":
        state.clear_values()
        return _reply({})
    payload = await _json(request)
    try:
        if not isinstance(payload, dict) or not isinstance(payload.get("values"), dict):
            raise ValueError('expected {"ticker": ..., "timeframe": ..., "values": {...}}')
        state.set_values(str(payload["ticker"]), str(payload.get("timeframe", "1d")),
                         payload["values"])
    except (KeyError, ValueError) as error:
        return _reply({"error": str(error)}, 400)
    return _reply(state.values(str(payload["ticker"]), str(payload.get("timeframe", "1d"))))



def create_standin_app(
    *,
    seed: int = 0,
    universe: Mapping[str, Iterable[str]] | None = None,
    change_share: float = 0.3,
    step_every: float | None = None,
    base_delay: float = 0.0,
) -> web.Application:
    """The stand-in as an aiohttp application; its state is ``app[STANDIN]``."""
    config = StandinConfig()
    config.update(
        {"change_share": change_share, "step_every": step_every, "base_delay": base_delay}
    )
    state = Standin(seed=seed, universe=universe, config=config)
    app = demo.create_scanner_app(state, scan=_scan)
    app[STANDIN] = state
    app.router.add_post("/_standin/faults", _post_faults)
    app.router.add_get("/_standin/faults", _get_faults)
    app.router.add_delete("/_standin/faults", _delete_faults)
    app.router.add_get("/_standin/requests", _get_requests)
    app.router.add_delete("/_standin/requests", _delete_requests)
    app.router.add_get("/_standin/stats", _get_stats)
    app.router.add_post("/_standin/step", _post_step)
    app.router.add_route("GET", "/_standin/config", _config)
    app.router.add_route("POST", "/_standin/config", _config)
    app.router.add_route("POST", "/_standin/values", _values)
    app.router.add_route("DELETE", "/_standin/values", _values)
    return app


async def serve_standin(
    host: str = "127.0.0.1", port: int = 0, *, app: web.Application | None = None, **options: Any
) -> tuple[web.AppRunner, str]:
    """Run the stand-in in this process; returns the runner (``await runner.cleanup()``) and URL.

    ``options`` go to :func:`create_standin_app` when no ``app`` is given.
    """
    return await demo.serve_standin(host, port, app=app or create_standin_app(**options))


async def _main(args: argparse.Namespace) -> None:
    universe = None
    if args.synthetic:
        counts = [int(part) for part in args.synthetic.split(",")]
        universe = synthetic_universe(*counts)
    runner, url = await serve_standin(
        args.host, args.port, seed=args.seed, universe=universe,
        change_share=args.change_share, step_every=args.step_every, base_delay=args.delay,
    )  # fmt: skip
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.standin", description="Run the stand-in TradingView scanner."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-every", type=float, default=None, help="seconds between steps")
    parser.add_argument("--change-share", type=float, default=0.3)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument(
        "--synthetic", default=None, metavar="FOREX,CRYPTO,AMERICA[,CFD]",
        help="serve a synthetic universe of these sizes instead of the default one",
    )  # fmt: skip
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
