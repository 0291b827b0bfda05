"""The gaps in Hypercorn 0.18 that quartsig closes, on every way of launching it.

``create_app()`` calls :func:`harden`, so the fixes apply under ``quartsig serve``,
under ``hypercorn -c hypercorn.toml 'quartsig.app:create_app()'`` and under any host
that builds the app in a process that has Hypercorn: what is fixed is the process's
Hypercorn, not one code path. They replace a few Hypercorn internals by name, all
listed in :data:`PATCHED`; ``pyproject.toml`` pins the Hypercorn versions they were
written for (:data:`HYPERCORN_VERSIONS`), :func:`missing` names what an upgrade took
away (``harden`` then refuses to start rather than serve unhardened), and
``tests/test_hosting.py`` fails by name when that happens.

The fixes:

- **permessage-deflate is declined** (:class:`DeclinedDeflate`). Compression costs
  ~100 KiB of zlib state per connection, multiplies the cost of each send by 2-3,
  inflates client frames with no output cap (a 261 KB compressed frame sent before
  auth took a worker from 71 MB to 476 MB), and defeats encode-once fan-out.
- **Client messages are capped before they are stored** (``WebsocketBuffer.extend``):
  Hypercorn appends a fragment first and checks ``websocket_max_message_size`` after.
  The cap is the smaller of Hypercorn's setting and 4 x ``QUARTSIG_MAX_FRAME_BYTES``.
- **A tick's frames skip Hypercorn's per-message dispatch** (``WSStream._accept``): an
  accepted stream offers itself in the scope (``scope["extensions"][SEND_EXTENSION]``),
  and :func:`text_sender` frames a text message itself and hands the bytes to the stream's
  ``send``, the same call Hypercorn's own ``_send_wsproto_event`` ends in (so the same
  lock, write and drain). Quart's ``Websocket.send`` -> ``app_send`` -> wsproto path it
  skips was 30 % of a bare Quart send (py-spy); a stream that is closing or closed gets
  that path, and its answer, unchanged.
- **Pings are a liveness check** (``WSStream._send_pings``): every
  ``QUARTSIG_HEARTBEAT_INTERVAL`` (started at a random point, so connections opened
  together do not ping together) a ping goes out, and a peer that sends nothing at all
  (not even the pong) within ``QUARTSIG_HEARTBEAT_TIMEOUT``, or whose ping cannot be
  written within it, is dropped. One
  :class:`Heartbeat` per loop keeps every stream's pings in a heap, instead of a task
  per connection sleeping between them; nothing of it waits with a closed stream.

Each stream reads the ping interval and the message cap from a copy of Hypercorn's
config with quartsig's values in it (``WSStream.__init__``), so a ``hypercorn.toml``
that says nothing about them still gets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import heapq
import inspect
import itertools
import logging
import random
import struct
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from importlib import import_module, metadata
from typing import Any

from wsproto.connection import ConnectionState
from wsproto.extensions import Extension, PerMessageDeflate

from quartsig.config import ConfigError, Settings

log = logging.getLogger(__name__)

HYPERCORN_VERSIONS = ">=0.18,<0.19"
"""The Hypercorn releases whose internals below were read; ``pyproject.toml`` says the same."""

#: Every Hypercorn name quartsig replaces or relies on -> the parameters it must have.
#: ``None``: a module attribute looked up at call time (no signature to check).
PATCHED: dict[str, tuple[str, ...] | None] = {
    "hypercorn.protocol.ws_stream.WSStream.__init__": (
        "self", "app", "config", "context", "task_group", "ssl", "client", "server", "send",
        "stream_id",
    ),
    "hypercorn.protocol.ws_stream.WSStream.handle": ("self", "event"),
    "hypercorn.protocol.ws_stream.WSStream._send_pings": ("self",),
    "hypercorn.protocol.ws_stream.WSStream._send_wsproto_event": ("self", "event"),
    "hypercorn.protocol.ws_stream.WSStream._accept": ("self", "message"),
    "hypercorn.protocol.ws_stream.ASGIWebsocketState.CONNECTED": None,
    "wsproto.connection.ConnectionState.OPEN": None,
    "hypercorn.protocol.ws_stream.WebsocketBuffer.extend": ("self", "event"),
    "hypercorn.protocol.ws_stream.WebsocketBuffer.__init__": ("self", "max_length"),
    "hypercorn.protocol.ws_stream.FrameTooLargeError": None,
    "hypercorn.protocol.ws_stream.PerMessageDeflate": None,
    "hypercorn.protocol.events.StreamClosed": None,
    "hypercorn.protocol.events.Data": None,
}


class HostingError(ConfigError):
    """This process's Hypercorn lacks what quartsig's fixes replace (the CLI exits 2)."""


@dataclass(frozen=True)
class StreamLimits:
    """quartsig's side of each websocket stream, from its settings."""

    ping_interval: float
    pong_timeout: float
    max_message_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamLimits:
        return cls(settings.heartbeat_interval, settings.heartbeat_timeout,
                   4 * settings.max_frame_bytes)


_limits: StreamLimits | None = None


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


def missing() -> list[str]:
    """What of :data:`PATCHED` this Hypercorn lacks or has with other parameters."""
    problems = []
    for dotted, parameters in PATCHED.items():
        try:
            target = _resolve(dotted)
        except (ImportError, AttributeError):
            problems.append(f"{dotted} is gone")
            continue
        if parameters is not None:
            try:
                found = tuple(inspect.signature(target).parameters)
            except (TypeError, ValueError):
                found = ()
            if found != parameters:
                problems.append(f"{dotted}{found} is not {dotted}{parameters}")
    with contextlib.suppress(ImportError, AttributeError, OSError, TypeError):
        from hypercorn.protocol.ws_stream import Handshake

        if "PerMessageDeflate()" not in inspect.getsource(Handshake.accept):
            problems.append("Handshake.accept no longer builds PerMessageDeflate()")
    return problems


def harden(settings: Settings) -> None:
    """Apply every fix to this process's Hypercorn, with ``settings``'s limits. Idempotent.

    Raises :class:`HostingError`, naming what is gone, when an upgraded Hypercorn no
    longer has what is replaced: better no server than one that looks hardened.
    The limits are per process; the last call's settings win.
    """
    global _limits
    try:
        import hypercorn  # noqa: F401
    except ImportError:  # another ASGI server: it has gaps of its own to close
        return
    problems = missing()
    if problems:
        version = metadata.version("hypercorn")
        raise HostingError(
            f"Hypercorn {version} is not one quartsig can harden ({'; '.join(problems)}); "
            f"install hypercorn{HYPERCORN_VERSIONS}"
        )
    _limits = StreamLimits.from_settings(settings)
    decline_permessage_deflate()
    give_streams_quartsig_limits()
    end_pings_with_their_stream()
    cap_websocket_messages()
    offer_direct_sends()


# -- per-stream config ---------------------------------------------------------------------

_derived: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def stream_config(config: Any) -> Any:
    """``config`` with quartsig's ping interval and message cap (one copy per config)."""
    limits = _limits
    if limits is None:
        return config
    derived = _derived.get(config)
    if derived is None or derived.__dict__.get("_quartsig_limits") is not limits:
        config.log  # noqa: B018 (built once here, so the copy shares the loggers)
        derived = copy.copy(config)
        derived.websocket_ping_interval = limits.ping_interval
        derived.websocket_max_message_size = min(
            config.websocket_max_message_size, limits.max_message_size
        )
        derived._quartsig_limits = limits
        _derived[config] = derived
    return derived


def give_streams_quartsig_limits() -> None:
    """Make each websocket stream read quartsig's limits from its config. Idempotent."""
    from hypercorn.protocol.ws_stream import WSStream

    if getattr(WSStream, "_quartsig_config", False):
        return
    init = WSStream.__init__

    @functools.wraps(init)
    def init_with_limits(self: WSStream, app: Any, config: Any, *args: Any, **kw: Any) -> None:
        init(self, app, stream_config(config), *args, **kw)

    WSStream.__init__ = init_with_limits  # type: ignore[method-assign]
    WSStream._quartsig_config = True  # type: ignore[attr-defined]


# -- pings -----------------------------------------------------------------------------------


class Heartbeat:
    """Every stream's pings on this loop, from one heap and one timer.

    Hypercorn's ping loop is a task per connection, sleeping between pings; with the pong
    check (an event to end it with its stream, a timeout per wait) it cost ~2.6 KiB per idle
    connection and a tenth of a 10 000-connection server's CPU (tracemalloc, py-spy). Here a
    stream is an entry of a heap until it closes: ``(when, order, stream, sent)``, where
    ``sent`` is None for "ping it at ``when``" and the ping's time for "it must have been
    heard from since ``sent`` by ``when``". Only writing a ping takes a task, for as long
    as the write lasts. A closed stream's entry is dropped when it comes up; the entry holds
    the stream weakly, so a closed stream is not kept alive meanwhile.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, weakref.ref[Any], float | None]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._due = float("inf")  # when the timer fires
        self._writes: set[asyncio.Task[None]] = set()

    def add(self, stream: Any) -> None:
        """Start pinging ``stream``: first at a random point of its interval, so connections
        opened together do not ping together."""
        interval = stream.config.websocket_ping_interval or 0.0
        self._push(self._loop.time() + random.uniform(0, interval), weakref.ref(stream), None)

    def __len__(self) -> int:
        return len(self._heap)

    def _push(self, when: float, ref: weakref.ref[Any], sent: float | None) -> None:
        heapq.heappush(self._heap, (when, next(self._order), ref, sent))
        if when < self._due:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._due = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._due = None, float("inf")
        heap, now = self._heap, self._loop.time()
        while heap and heap[0][0] <= now:
            _, _, ref, sent = heapq.heappop(heap)
            stream = ref()
            if stream is None or stream.closed:
                continue
            if sent is None:
                self._write(self._ping(stream, ref))
            elif stream.__dict__.get("_quartsig_heard", float("-inf")) < sent:
                # Nothing at all from the peer since the ping: it is gone. Closing the
                # stream tells the app (1006) and makes the protocol drop the TCP connection.
                self._write(stream.send(_stream_closed(stream_id=stream.stream_id)))
            else:
                interval = stream.config.websocket_ping_interval or 0.0
                limits = stream.config.__dict__.get("_quartsig_limits")
                self._push(now + max(0.0, interval - limits.pong_timeout), ref, None)
        if heap:
            self._arm(heap[0][0])

    async def _ping(self, stream: Any, ref: weakref.ref[Any]) -> None:
        sent = self._loop.time()  # anything heard from here on answers this ping
        limits = stream.config.__dict__.get("_quartsig_limits")
        if limits is None:  # a config quartsig did not derive: Hypercorn's plain pings
            await stream._send_wsproto_event(_ping_event())
            if not stream.closed:
                self._push(self._loop.time() + (stream.config.websocket_ping_interval or 0.0),
                           ref, None)
            return
        try:
            async with asyncio.timeout(limits.pong_timeout):
                await stream._send_wsproto_event(_ping_event())
        except TimeoutError:  # it reads nothing either: gone, as surely as a silent one
            await stream.send(_stream_closed(stream_id=stream.stream_id))
            return
        if not stream.closed:  # the deadline runs once the ping is written
            self._push(self._loop.time() + limits.pong_timeout, ref, sent)

    def _write(self, write: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(write)
        self._writes.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("heartbeat write failed", exc_info=task.exception())


_heartbeats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeat] = (
    weakref.WeakKeyDictionary()
)
_stream_closed: Any = None
_ping_event: Any = None


def heartbeat() -> Heartbeat:
    """The running loop's :class:`Heartbeat`."""
    loop = asyncio.get_running_loop()
    beat = _heartbeats.get(loop)
    if beat is None:
        beat = _heartbeats[loop] = Heartbeat(loop)
    return beat


def end_pings_with_their_stream() -> None:
    """Make Hypercorn's pings a liveness check kept by one :class:`Heartbeat`. Idempotent.

    Hypercorn 0.18's ``WSStream._send_pings`` never looks for pongs, and looks at
    ``closed`` only after sleeping a whole ``websocket_ping_interval`` while the
    connection's task waits for it: every closed websocket lingered up to
    ``HEARTBEAT_INTERVAL`` (25 s), and a SIGTERM after any client closed waited out
    ``graceful_timeout`` before the process could exit. Here the task Hypercorn spawns for
    ``_send_pings`` hands the stream to the heartbeat and ends at once, so nothing of the
    heartbeat waits with the connection.
    """
    global _stream_closed, _ping_event
    from hypercorn.protocol.events import Data, StreamClosed
    from hypercorn.protocol.ws_stream import WSStream
    from wsproto.events import Ping

    _stream_closed, _ping_event = StreamClosed, Ping
    if getattr(WSStream, "_quartsig_pings", False):
        return
    handle = WSStream.handle

    @functools.wraps(WSStream._send_pings)
    async def _send_pings(self: WSStream) -> None:
        heartbeat().add(self)  # spawned when the interval is set

    @functools.wraps(handle)
    async def handle_and_hear(self: WSStream, event: object) -> None:
        if isinstance(event, Data):
            self.__dict__["_quartsig_heard"] = asyncio.get_running_loop().time()
        await handle(self, event)  # type: ignore[arg-type]

    WSStream._send_pings = _send_pings  # type: ignore[method-assign]
    WSStream.handle = handle_and_hear  # type: ignore[method-assign]
    WSStream._quartsig_pings = True  # type: ignore[attr-defined]


# -- message cap -----------------------------------------------------------------------------


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

    @functools.wraps(extend)
    def capped_extend(self: WebsocketBuffer, event: Any) -> None:
        if self.length + len(event.data) > self.max_length:
            raise FrameTooLargeError()
        extend(self, event)

    WebsocketBuffer.extend = capped_extend  # type: ignore[method-assign]
    WebsocketBuffer._quartsig_capped = True  # type: ignore[attr-defined]


# -- permessage-deflate ----------------------------------------------------------------------
# Hypercorn builds ``[PerMessageDeflate()]`` inside ``Handshake.accept`` with no setting, so
# the class it looks up there is replaced by one that declines every offer; a client that
# then sends a compressed (RSV1) frame is a protocol error.


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
    from hypercorn.protocol import ws_stream

    ws_stream.PerMessageDeflate = DeclinedDeflate  # type: ignore[attr-defined,assignment]


# -- direct sends ----------------------------------------------------------------------------
# A stream's own ``send`` (``H11Protocol.stream_send`` or ``H2Protocol.stream_send``) takes the
# websocket's bytes as a ``Data`` event; Hypercorn reaches it through the ASGI ``send`` ->
# ``app_send`` -> wsproto for each message. Instance attributes read here (``scope``, ``closed``,
# ``state``, ``connection``, ``send``, ``stream_id``) are exercised on a real ``WSStream`` by
# ``tests/test_hosting.py``.

SEND_EXTENSION = "quartsig.direct_send"
"""The ASGI scope extension under which an accepted Hypercorn stream offers itself."""

#: Hypercorn's ``ASGIWebsocketState.CONNECTED`` and ``events.Data``, once it is hardened.
_connected: Any = None
_data: Any = None
_TEXT_FIN = 0x81  # FIN + opcode 1 (text); a server's frames are never masked (RFC 6455 5.1)


def frame_text(text: str) -> bytes:
    """``text`` as one final, unmasked text frame: wsproto's bytes with no extension active."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        return bytes((_TEXT_FIN, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", _TEXT_FIN, 126, size) + payload
    return struct.pack("!BBQ", _TEXT_FIN, 127, size) + payload


def offer_direct_sends() -> None:
    """Make each accepted stream offer itself in its scope, when no extension can be on.

    Only while permessage-deflate is declined (:func:`decline_permessage_deflate`): with
    an extension negotiated, wsproto's framing is not :func:`frame_text`'s. Idempotent.
    """
    from hypercorn.protocol import ws_stream

    global _connected, _data
    from hypercorn.protocol.events import Data

    _connected, _data = ws_stream.ASGIWebsocketState.CONNECTED, Data
    if getattr(ws_stream.WSStream, "_quartsig_direct", False):
        return
    accept = ws_stream.WSStream._accept

    @functools.wraps(accept)
    async def accept_and_offer(self: Any, message: Any) -> None:
        await accept(self, message)
        if ws_stream.PerMessageDeflate is DeclinedDeflate:  # type: ignore[attr-defined,comparison-overlap]
            self.scope.setdefault("extensions", {})[SEND_EXTENSION] = self

    ws_stream.WSStream._accept = accept_and_offer  # type: ignore[method-assign]
    ws_stream.WSStream._quartsig_direct = True  # type: ignore[attr-defined]


def text_sender(
    scope: Mapping[str, Any], fallback: Callable[[str], Awaitable[None]]
) -> Callable[[str], Awaitable[None]]:
    """The cheapest way to send text on this websocket: the stream's own send when the
    server offered it (:func:`offer_direct_sends`), else ``fallback`` (Quart's ``send``)."""
    stream = (scope.get("extensions") or {}).get(SEND_EXTENSION)
    if stream is None:
        return fallback
    return _DirectSend(stream, fallback)


class _DirectSend:
    """Unlike Quart's ``send``, this does not yield to the loop unless the socket is full:
    a caller sending to many clients in a row yields on its own. (A class with slots, not a
    ``functools.partial``: 150 B less for every connection.)"""

    __slots__ = ("fallback", "stream")

    def __init__(self, stream: Any, fallback: Callable[[str], Awaitable[None]]) -> None:
        self.stream = stream
        self.fallback = fallback

    async def __call__(self, text: str) -> None:
        stream = self.stream
        if (stream.closed or stream.state is not _connected
                or stream.connection.state is not ConnectionState.OPEN):
            await self.fallback(text)  # closing or closed: what Hypercorn does then (drop, raise)
            return
        await stream.send(_data(stream_id=stream.stream_id, data=frame_text(text)))
