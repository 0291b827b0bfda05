"""``quartsig serve``: Hypercorn's config, and serving until SIGTERM.

``quartsig serve`` builds Hypercorn's config from ``hypercorn.toml``, ``$PORT`` and the
stream settings, and serves until SIGTERM, when every client is told 1001 first. The
mends to Hypercorn itself live in :mod:`quartsig.hosting`; ``create_app()`` applies
them, so they hold however the app is launched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import LifespanFailureError, wrap_app
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from quart import Quart

from quartsig.app import state_of
from quartsig.config import ConfigError, Settings
from quartsig.hosting import StreamLimits
from quartsig.hosting import install as decline_permessage_deflate
from quartsig.hosting.sockets import count_sockets
from quartsig.ops import health, probes
from quartsig.ops.freezer import Freezer
from quartsig.state import State

__all__ = ["DEFAULT_BIND", "StartError", "apply_stream_settings", "decline_permessage_deflate",
           "hypercorn_config", "listen", "run", "serve_until_signalled"]

DEFAULT_BIND = "127.0.0.1:8000"

#: A worker's exit code when it cannot start: the parent stops them all instead of respawning.
EXIT_START = 2


class StartError(Exception):
    """The server cannot start (its port is taken, a component failed): one line, exit 2."""


def listen(config: Config) -> Sockets:
    """Bind and listen on every address of ``config``, before anything else starts.

    A node that cannot listen must not join its cluster: it would campaign for the lease,
    win it when the leader stops, and publish nothing while holding it (issue #24.1). So
    the sockets come first, and the app's lifespan (the broker, the collector) only after.
    """
    try:
        sockets = config.create_sockets()
    except OSError as error:
        reason = error.strerror or str(error)
        raise StartError(f"cannot listen on {', '.join(config.bind)}: {reason}") from None
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.listen(config.backlog)
    return sockets


def hypercorn_config(path: Path, bind: str | None, environ: Mapping[str, str]) -> Config:
    """Hypercorn's config from ``path`` (if it exists), then ``$PORT``, then ``--bind``.

    Hypercorn's ``"-"`` log targets are swapped for plain named loggers, so its
    lines go through the root handler (once, redacted) instead of handlers of
    its own that would print errors twice.
    """
    if path.is_file():
        try:
            config = Config.from_toml(path)
        except (OSError, ValueError) as error:  # TOMLDecodeError is a ValueError
            raise ConfigError(f"{path}: {error}") from None
    else:
        config = Config()
        config.bind = [DEFAULT_BIND]
    if config.errorlog == "-":
        config.errorlog = logging.getLogger("hypercorn.error")
    if config.accesslog == "-":
        config.accesslog = logging.getLogger("hypercorn.access")
    port = environ.get("PORT", "").strip()
    if bind:
        config.bind = [bind]
    elif port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("PORT: must be a TCP port number")
        config.bind = [f"0.0.0.0:{port}"]
    return config


def event_loop_factory(worker_class: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if worker_class != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def apply_stream_settings(config: Config, settings: Settings) -> Config:
    """Hypercorn's side of the stream's limits.

    No ``read_timeout``: the heartbeat (:class:`quartsig.hosting.Heartbeat`) drops a peer
    that sends nothing within ``HEARTBEAT_TIMEOUT`` of a ping, or whose ping cannot even be
    written in that time. A read timeout made Hypercorn wrap every read in ``wait_for``: a
    task, a future and a timer held by every idle connection (1.4 KiB, tracemalloc) and
    made anew for each pong.
    """
    return StreamLimits.from_settings(settings).apply(config)  # the rule: quartsig.hosting.limits


def freeze_start_up() -> None:
    """Move every object alive once started into the cycle collector's permanent generation.

    A server's start-up leaves hundreds of thousands of objects that live as long as it does
    (modules, functions, the ORM's and the routes' tables, the plugins, the first tick's
    data): each full collection walked them all again, while ticks and connections make
    enough new containers to trigger one every few ticks (issue 23: pauses of 0.8-2.6 s
    during a fan-out at 10 000 connections). Collected first, so that no garbage of the
    start-up is frozen with them (it would never be freed); what is frozen is still freed by
    its reference count when it dies, only never traversed again."""
    gc.collect()
    gc.freeze()


async def _frozen_once_started(app: Quart) -> AsyncGenerator[None, None]:
    """A lifespan step after the app's own (Quart runs them in order of registration): the
    start-up frozen, then what connections keep, as it settles (:func:`freezer_of`)."""
    freeze_start_up()
    state = state_of(app)
    freezer = freezer_of(state)
    task = None if freezer is None else state.supervisor.spawn("gc-freezer", freezer.run)
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def freezer_of(state: State) -> Freezer | None:
    """The server's :class:`quartsig.ops.freezer.Freezer` (``None`` when the setting turns it
    off): it thaws only in the first half of an interval after a publication (the next tick
    is at least half an interval away), or when none came for two intervals (no fan-out)."""
    settings = state.settings
    if not settings.gc_freeze_period:
        return None
    interval = settings.interval

    def quiet() -> bool:
        age = time.monotonic() - state.published_at
        return age < interval / 2 or age > 2 * interval

    sockets = count_sockets()
    return Freezer(closed=lambda: sockets.closed, open=lambda: sockets.opened - sockets.closed,
                   quiet=quiet, period=settings.gc_freeze_period)


async def serve_until_signalled(app: Quart, config: Config,
                                sockets: Sockets | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then close every client with 1001 before Hypercorn stops.

    Hypercorn would otherwise wait out ``graceful_timeout`` for websocket handlers
    that never end on their own, then cut them without a close frame. ``sockets`` come
    from :func:`listen` (made here when not given), so nothing starts before they exist.
    """
    if sockets is None:
        sockets = listen(config)
    app.while_serving(functools.partial(_frozen_once_started, app))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    on_signal(loop, stop)

    async def shutdown_trigger() -> None:
        await stop.wait()
        state = state_of(app)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(config.graceful_timeout):
                # Again until none is left: one may have been authenticating meanwhile.
                while state.close_all():  # noqa: ASYNC110 (shutdown only; a poll is simplest)
                    await asyncio.sleep(0.02)

    try:
        await worker_serve(wrap_app(app, config.wsgi_max_body_size, None), config,
                           sockets=sockets, shutdown_trigger=shutdown_trigger)
    except LifespanFailureError as error:
        raise StartError(f"start-up failed: {error.args[-1] if error.args else error}") from None
    finally:
        release_signals(loop)


def on_signal(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """The first SIGTERM or SIGINT stops gracefully; the next one ends the process at once.

    A graceful stop waits for components and tasks; one that swallows its cancellation
    (redis-py can) must not leave a process that answers no signal (issue #24.1).
    """

    def first() -> None:
        stop.set()
        release_signals(loop)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, first)


def release_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Give SIGTERM and SIGINT their default action (end the process) back.

    Called at the first signal and once serving is over: what is left to do (tasks ending,
    the loop closing) must not outlive a second signal.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(signum)
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, signal.SIG_DFL)


def probe_routes(state: State) -> dict[str, probes.Route]:
    """``quartsig collect``'s own ``/livez``, ``/readyz`` and ``/metrics`` (as the web app's)."""

    def readyz() -> probes.Answer:
        found = state.readiness()
        body = {"status": "error" if found else "ok", **health.report(found)}
        return 503 if found else 200, "application/json", json.dumps(body).encode()

    return {
        "/livez": lambda: (200, "application/json", b'{"status": "ok"}'),
        "/readyz": readyz,
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(state.metrics.registry)),
    }


async def run_until_signalled(state: State, probe_bind: str | None = None) -> None:
    """Live ``state`` (its components) until SIGTERM/SIGINT: ``quartsig collect``, with its
    probes on ``probe_bind``, listening before anything joins the cluster."""
    try:
        prober = None if probe_bind is None else await probes.serve(probe_bind,
                                                                      probe_routes(state))
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise StartError(f"cannot listen on {probe_bind}: {reason}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    on_signal(loop, stop)
    try:
        await _live(state, stop, loop)
    finally:
        if prober is not None:
            prober.close()


async def _live(state: State, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
    """The lifespan of ``state`` until ``stop``; a failure to start is one line (exit 2)."""
    lifespan = state.lifespan()
    try:
        await anext(lifespan)
    except Exception as error:
        release_signals(loop)
        raise StartError(f"start-up failed: {error}") from None
    freeze_start_up()
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(lifespan)
        release_signals(loop)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to build its own app (an app cannot cross processes)."""

    demo: bool
    bind: str | None
    config: Path
    #: The run's directory where every worker writes its metrics (one scrape sees them all).
    metrics_dir: Path | None = None


def _worker(spec: WorkerSpec, workers: int) -> None:
    """One worker process: the same app, fixes and SIGTERM handling as ``quartsig serve``."""
    from quartsig.app import create_app
    from quartsig.ops import logs

    logs.configure(logging.INFO)
    settings = Settings.from_env()
    logs.setup(settings.log_format, settings.log_probes)
    config = apply_stream_settings(hypercorn_config(spec.config, spec.bind, os.environ),
                                   settings)
    config.workers = workers  # each worker binds with SO_REUSEPORT: the kernel spreads clients
    app = create_app(settings, demo=spec.demo, log_plugins=False)
    state_of(app).metrics_dir = spec.metrics_dir
    try:
        run(app, config)
    except StartError as error:
        logging.getLogger(__name__).error("worker %s: %s", os.getpid(), error)
        sys.exit(EXIT_START)


def run_workers(spec: WorkerSpec, workers: int) -> int:
    """Run ``workers`` processes on one port, each a full ``quartsig serve``.

    Hypercorn's own multi-worker ``run()`` would skip quartsig's SIGTERM handling (every client
    told 1001) and restart nothing; here the parent forwards SIGTERM/SIGINT, and a worker that
    dies unasked is started again (its clients reconnect to the others meanwhile). Only with
    Redis: the workers elect one collector between them.
    """
    context = multiprocessing.get_context("spawn")
    stopping = False
    metrics_dir = Path(tempfile.mkdtemp(prefix="quartsig-metrics-"))
    spec = dataclasses.replace(spec, metrics_dir=metrics_dir)

    def spawn() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(spec, workers), daemon=False)
        process.start()
        return process

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    processes = [spawn() for _ in range(workers)]
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    while True:
        multiprocessing.connection.wait([process.sentinel for process in processes])
        if stopping:
            break
        if any(process.exitcode == EXIT_START for process in processes):
            failed = True  # it would fail again: stop them all, as one process would
            forward(signal.SIGTERM, None)
            break
        for index, process in enumerate(processes):
            if not process.is_alive():
                logging.getLogger(__name__).warning(
                    "worker %s exited with %s; starting another", process.pid, process.exitcode)
                processes[index] = spawn()
    for process in processes:
        process.join()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return EXIT_START if failed else 0


def run(app: Quart, config: Config, sockets: Sockets | None = None) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, on uvloop when the config asks for it.

    ``app`` comes from ``create_app()``, which has applied :func:`quartsig.hosting.harden`.
    ``sockets``: from :func:`listen`, when the caller had to know it listens first.
    """
    if sockets is None:
        sockets = listen(config)  # before the loop and the app's lifespan: see listen()
    with (asyncio.Runner(loop_factory=event_loop_factory(config.worker_class)) as runner,
          warnings.catch_warnings()):
        # A worker of run_workers() keeps ``workers`` > 1 so that it binds with SO_REUSEPORT;
        # Hypercorn's serve() warns that it runs one process, which is the point.
        warnings.filterwarnings("ignore", message="The config `workers` has no affect")
        runner.run(serve_until_signalled(app, config, sockets))
