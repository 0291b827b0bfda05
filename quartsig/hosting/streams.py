"""quartsig's websocket stream: Hypercorn's ``WSStream`` with its gaps closed, by subclassing.

Hypercorn has no setting for its stream class, so :func:`install` puts :class:`Stream` where
Hypercorn's protocols look the name up when a websocket request comes in
(``hypercorn.protocol.h11.WSStream``, ``.h2.WSStream`` and, when aioquic is there, ``.h3``):
the one patch that must stay, three module attributes, because it is the only place Hypercorn
reads the class from. Nothing of Hypercorn's own classes is replaced or wrapped.

What the subclass changes:

- **permessage-deflate is declined** (:meth:`Stream._accept`): the client's offer is dropped
  before Hypercorn's handshake answers it. Compression costs ~100 KiB of zlib state per
  connection, multiplies the cost of each send by 2-3, inflates client frames with no output
  cap (a 261 KB compressed frame sent before auth took a worker from 71 MB to 476 MB), and
  defeats encode-once fan-out. A client that sends a compressed (RSV1) frame anyway commits a
  protocol error.
- **Client messages are capped before they are stored** (:class:`CappedBuffer`): Hypercorn's
  ``WebsocketBuffer.extend`` appends a fragment first and checks the size after, and kept
  appending after it had answered 1009, so one endless fragmented message grew the server's
  memory without bound (200 MB sent: RSS +230 MB).
- **The app's limits** (:mod:`quartsig.hosting.limits`): the stream reads its config with the
  ping interval and message cap of the app it serves.
- **Pings are a liveness check** kept by the loop's :class:`~quartsig.hosting.heartbeat.Heartbeat`:
  the task Hypercorn spawns for ``_send_pings`` hands the stream over and ends at once.
- **It offers its own send** in the scope (:mod:`quartsig.hosting.sender`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from hypercorn.protocol.events import Data, Event
from hypercorn.protocol.ws_stream import FrameTooLargeError, WebsocketBuffer, WSStream

from quartsig.hosting.heartbeat import heartbeat
from quartsig.hosting.limits import StreamLimits, limits_of
from quartsig.hosting.sender import SEND_EXTENSION

#: Where Hypercorn's protocols look up the stream class; ``h3`` only with aioquic installed.
PROTOCOLS = ("hypercorn.protocol.h11", "hypercorn.protocol.h2", "hypercorn.protocol.h3")


class CappedBuffer(WebsocketBuffer):
    """A client message's fragments, refused before one past the cap is stored."""

    def extend(self, event: Any) -> None:
        if self.length + len(event.data) > self.max_length:
            raise FrameTooLargeError()
        super().extend(event)


class Stream(WSStream):
    """One websocket, as quartsig needs Hypercorn to run it; see the module docstring."""

    #: When the peer was last heard from (anything at all: a pong, a message, a close).
    heard = float("-inf")

    def __init__(self, app: Any, config: Any, *args: Any) -> None:
        self.limits: StreamLimits | None = limits_of(app)
        if self.limits is not None:
            config = self.limits.config_for(config)
        super().__init__(app, config, *args)
        self.buffer = CappedBuffer(config.websocket_max_message_size)
        self.beat = heartbeat()  # built on the loop that serves it, so this is that loop's

    async def handle(self, event: Event) -> None:
        if isinstance(event, Data):
            self.beat.hear(self)
        await super().handle(event)

    async def _accept(self, message: Any) -> None:
        self.handshake.extensions = None  # nothing offered, so nothing negotiated
        await super()._accept(message)
        self.scope.setdefault("extensions", {})[SEND_EXTENSION] = self  # type: ignore[assignment]

    async def _send_pings(self) -> None:
        self.beat.add(self)  # spawned by ``_accept`` when the interval is set


def install() -> None:
    """Make this process's Hypercorn build :class:`Stream` for every websocket. Idempotent."""
    for name in PROTOCOLS:
        try:
            module = import_module(name)
        except ImportError:  # h3 without aioquic: no HTTP/3, nothing to install
            continue
        module.WSStream = Stream  # type: ignore[attr-defined]
