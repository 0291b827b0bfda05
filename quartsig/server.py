"""Hosting quartsig in Hypercorn, and the gaps in Hypercorn 0.18 it closes.

``quartsig serve`` builds Hypercorn's config from ``hypercorn.toml``, ``$PORT`` and the
stream settings, mends what Hypercorn leaves to the application (see
``docs/architecture.md``), and serves until SIGTERM, when every client is told 1001
first. The mends replace a few Hypercorn internals by name; each says why, and each is
covered by a test that fails if a Hypercorn upgrade moves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.protocol import ws_stream
from quart import Quart
from wsproto.extensions import Extension, PerMessageDeflate

from quartsig.config import ConfigError, Settings
from quartsig.runtime import EXTENSION, State

DEFAULT_BIND = "127.0.0.1:8000"


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

    Hypercorn pings every ``HEARTBEAT_INTERVAL`` but never checks for pongs; a
    read timeout of interval + ``HEARTBEAT_TIMEOUT`` turns those pings into a
    liveness check, since a live peer's pong is read within it and a dead one's
    connection is dropped.
    """
    config.websocket_ping_interval = settings.heartbeat_interval
    config.read_timeout = settings.heartbeat_interval + settings.heartbeat_timeout  # type: ignore[assignment]
    config.websocket_max_message_size = min(
        config.websocket_max_message_size, 4 * settings.max_frame_bytes
    )
    return config


def end_pings_with_their_stream() -> None:
    """Make Hypercorn's websocket ping loop end as soon as its stream closes. Idempotent.

    Hypercorn 0.18's ``WSStream._send_pings`` looks at ``closed`` only after sleeping a
    whole ``websocket_ping_interval``, and the connection's task waits for it: every
    closed websocket lingers up to ``HEARTBEAT_INTERVAL`` (25 s), and a SIGTERM after
    any client closed waited out ``graceful_timeout`` before the process could exit.
    """
    from hypercorn.protocol.ws_stream import WSStream
    from wsproto.events import Ping

    if getattr(WSStream, "_quartsig_pings", False):
        return
    handle = WSStream.handle

    async def _send_pings(self: WSStream) -> None:
        closed = self.__dict__.setdefault("_quartsig_closed", asyncio.Event())
        interval = self.config.websocket_ping_interval
        # Start at a random point of the interval: connections opened together (after a
        # restart, say) would otherwise ping, and have their pongs read, all at once.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(random.uniform(0, interval)):
                await closed.wait()
        while not self.closed:
            await self._send_wsproto_event(Ping())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.websocket_ping_interval):
                    await closed.wait()

    async def handle_and_wake(self: WSStream, event: object) -> None:
        await handle(self, event)  # type: ignore[arg-type]
        closed = self.__dict__.get("_quartsig_closed")
        if self.closed and closed is not None:
            closed.set()

    WSStream._send_pings = _send_pings  # type: ignore[method-assign]
    WSStream.handle = handle_and_wake  # type: ignore[method-assign,assignment]
    WSStream._quartsig_pings = True  # type: ignore[attr-defined]


def cap_websocket_messages() -> None:
    """Make Hypercorn drop an oversized client message instead of storing it. Idempotent.

    Hypercorn 0.18's ``WebsocketBuffer.extend`` appends each fragment *before* checking
    ``websocket_max_message_size``, and keeps appending after it has answered 1009, so one
    endless fragmented message grew the server's memory without bound (200 MB sent: RSS
    +230 MB). Checked first, nothing past the limit is ever stored.
    """
    from hypercorn.protocol.ws_stream import FrameTooLargeError, WebsocketBuffer

    if getattr(WebsocketBuffer, "_quartsig_capped", False):
        return
    extend = WebsocketBuffer.extend

    def capped_extend(self: WebsocketBuffer, event: Any) -> None:
        if self.length + len(event.data) > self.max_length:
            raise FrameTooLargeError()
        extend(self, event)

    WebsocketBuffer.extend = capped_extend  # type: ignore[method-assign]
    WebsocketBuffer._quartsig_capped = True  # type: ignore[attr-defined]


async def serve_until_signalled(app: Quart, config: Config) -> None:
    """Serve until SIGTERM/SIGINT; then close every client with 1001 before Hypercorn stops.

    Hypercorn would otherwise wait out ``graceful_timeout`` for websocket handlers
    that never end on their own, then cut them without a close frame.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        state: State = app.extensions[EXTENSION]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(config.graceful_timeout):
                # Again until none is left: one may have been authenticating meanwhile.
                while state.close_all():  # noqa: ASYNC110 (shutdown only; a poll is simplest)
                    await asyncio.sleep(0.02)

    await serve(app, config, shutdown_trigger=shutdown_trigger)



def close_hypercorn_gaps() -> None:
    """Apply every mend below to this process's Hypercorn. Idempotent."""
    decline_permessage_deflate()
    end_pings_with_their_stream()
    cap_websocket_messages()


async def run_until_signalled(state: State) -> None:
    """Live ``state`` (its components) until SIGTERM/SIGINT: ``quartsig collect``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    lifespan = state.lifespan()
    await anext(lifespan)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(lifespan)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to build its own app (an app cannot cross processes)."""

    demo: bool
    bind: str | None
    config: Path


def _worker(spec: WorkerSpec, workers: int) -> None:
    """One worker process: the same app, fixes and SIGTERM handling as ``quartsig serve``."""
    from quartsig import logs
    from quartsig.app import create_app

    logs.configure(logging.INFO)
    settings = Settings.from_env()
    config = apply_stream_settings(hypercorn_config(spec.config, spec.bind, os.environ),
                                   settings)
    config.workers = workers  # each worker binds with SO_REUSEPORT: the kernel spreads clients
    run(create_app(settings, demo=spec.demo), config)


def run_workers(spec: WorkerSpec, workers: int) -> int:
    """Run ``workers`` processes on one port, each a full ``quartsig serve``.

    Hypercorn's own multi-worker ``run()`` would skip quartsig's SIGTERM handling (every client
    told 1001) and restart nothing; here the parent forwards SIGTERM/SIGINT, and a worker that
    dies unasked is started again (its clients reconnect to the others meanwhile). Only with
    Redis: the workers elect one collector between them.
    """
    context = multiprocessing.get_context("spawn")
    stopping = False

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
    while True:
        multiprocessing.connection.wait([process.sentinel for process in processes])
        if stopping:
            break
        for index, process in enumerate(processes):
            if not process.is_alive():
                logging.getLogger(__name__).warning(
                    "worker %s exited with %s; starting another", process.pid, process.exitcode)
                processes[index] = spawn()
    for process in processes:
        process.join()
    return 0


def run(app: Quart, config: Config) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, on uvloop when the config asks for it."""
    close_hypercorn_gaps()
    with (asyncio.Runner(loop_factory=event_loop_factory(config.worker_class)) as runner,
          warnings.catch_warnings()):
        # A worker of run_workers() keeps ``workers`` > 1 so that it binds with SO_REUSEPORT;
        # Hypercorn's serve() warns that it runs one process, which is the point.
        warnings.filterwarnings("ignore", message="The config `workers` has no affect")
        runner.run(serve_until_signalled(app, config))


# -- permessage-deflate ------------------------------------------------------------------
# Compression costs ~100 KiB of zlib state per connection, multiplies the cost of each
# send by 2-3, inflates client frames with no output cap (a decompression bomb), and
# defeats encode-once fan-out since every connection compresses the same text again.
# quartsig's frames are small, so it declines. Hypercorn builds ``[PerMessageDeflate()]``
# inside ``Handshake.accept`` with no setting, so the class it looks up there is replaced
# by one that declines every offer; a client that then sends a compressed (RSV1) frame
# is a protocol error.


class DeclinedDeflate(Extension):
    """An extension named permessage-deflate whose ``accept`` declines every offer."""

    name = PerMessageDeflate.name

    def offer(self) -> bool:
        return False

    def accept(self, offer: str) -> None:
        return None

    def enabled(self) -> bool:
        return False


def decline_permessage_deflate() -> None:
    """Make this process's Hypercorn refuse permessage-deflate. Idempotent."""
    ws_stream.PerMessageDeflate = DeclinedDeflate  # type: ignore[misc,assignment]


def restore_permessage_deflate() -> None:
    ws_stream.PerMessageDeflate = PerMessageDeflate  # type: ignore[misc]
