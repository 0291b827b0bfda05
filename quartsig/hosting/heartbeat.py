"""Every stream's pings on one loop, from one heap and one timer.

Hypercorn 0.18's ``WSStream._send_pings`` is a task per connection sleeping between pings; it
never looks for pongs, and looks at ``closed`` only after sleeping a whole interval, so every
closed websocket lingered up to ``QUARTSIG_HEARTBEAT_INTERVAL`` (25 s) and a SIGTERM after any
client closed waited out ``graceful_timeout``. With a pong check (an event to end it with its
stream, a timeout per wait) it cost ~2.6 KiB per idle connection and a tenth of a 10 000-connection
server's CPU (tracemalloc, py-spy). Here a stream is an entry of a heap until it closes; only
writing a ping takes a task, for as long as the write lasts.

Time comes from an injected :class:`Clock` (the loop by default), so tests move it by hand.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from hypercorn.protocol.events import StreamClosed
from wsproto.events import Ping

from quartsig.ops.logs import Sparse

log = logging.getLogger(__name__)


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the heartbeat needs of time: an event loop has both."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> Timer: ...


class Heartbeat:
    """Every stream's pings on this loop.

    A heap entry is ``(when, order, stream, sent, write)``: ``sent`` None means "ping it at
    ``when``"; otherwise a ping was sent at ``sent`` (``write`` is its task) and by ``when``
    the ping must be written and the peer heard from since. A peer that sends nothing at all
    (not even the pong) by then, or whose ping cannot even be written (it reads nothing), is
    gone: its stream is closed, which tells the app (1006) and drops the TCP connection. A
    closed stream's entry is dropped when it comes up; entries hold streams weakly.

    A stream offers ``closed``, ``stream_id``, ``send``, ``_send_wsproto_event``, ``heard``
    (when its peer was last heard from, :meth:`hear`) and ``limits`` (None: Hypercorn's plain
    pings, every ``config.websocket_ping_interval``, no deadline).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock | None = None) -> None:
        self._loop = loop
        self.clock: Clock = loop if clock is None else clock
        self._heap: list[tuple[float, int, weakref.ref[Any], float | None,
                               asyncio.Task[None] | None]] = []
        self._order = itertools.count()
        self._timer: Timer | None = None
        self._due = float("inf")  # when the timer fires
        self._writes: set[asyncio.Task[None]] = set()
        #: Streams whose turn raised (counted; logged at most once a minute).
        self.failures = 0
        self._failed = Sparse(60.0)

    def add(self, stream: Any) -> None:
        """Start pinging ``stream``: first at a random point of its interval, so connections
        opened together do not ping together."""
        self._push(self.clock.time() + random.uniform(0, _interval(stream)), weakref.ref(stream))

    def hear(self, stream: Any) -> None:
        """``stream``'s peer sent something: it answers any ping sent before now."""
        stream.heard = self.clock.time()

    def __len__(self) -> int:
        return len(self._heap)

    def _push(self, when: float, ref: weakref.ref[Any], sent: float | None = None,
              write: asyncio.Task[None] | None = None) -> None:
        heapq.heappush(self._heap, (when, next(self._order), ref, sent, write))
        if when < self._due:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._due = when
        self._timer = self.clock.call_at(when, self._fire)

    def _fire(self) -> None:
        """Ping, close or re-queue every entry that is due. One stream that raises is logged
        and dropped from the heap; the timer is armed again whatever happens, since a timer
        callback that dies would silently stop every connection's pings for good."""
        self._timer, self._due = None, float("inf")
        heap, now = self._heap, self.clock.time()
        try:
            while heap and heap[0][0] <= now:
                entry = heapq.heappop(heap)
                try:
                    self._step(entry, now)
                except Exception:
                    self.failures += 1
                    if (held := self._failed.due()) is not None:
                        log.error("heartbeat: a stream's turn failed; it gets no more pings "
                                  "(%d more since the last report)", held, exc_info=True)
        finally:
            if heap:
                self._arm(heap[0][0])

    def _step(self, entry: tuple[float, int, weakref.ref[Any], float | None,
                                 asyncio.Task[None] | None], now: float) -> None:
        _, _, ref, sent, write = entry
        stream = ref()
        if stream is None or stream.closed:
            return
        if sent is None:
            self._ping(stream, ref)
        elif (write is not None and not write.done()) or stream.heard < sent:
            if write is not None:
                write.cancel()
            self._write(stream.send(StreamClosed(stream_id=stream.stream_id)))
        else:
            limits = stream.limits
            self._push(now + max(0.0, limits.ping_interval - limits.pong_timeout), ref)

    def _ping(self, stream: Any, ref: weakref.ref[Any]) -> None:
        sent = self.clock.time()  # anything heard from here on answers this ping
        write = self._write(stream._send_wsproto_event(Ping()))
        limits = stream.limits
        if limits is not None:
            self._push(sent + limits.pong_timeout, ref, sent, write)
            return

        def again(_: asyncio.Task[None]) -> None:  # plain pings: the next once this is written
            if not stream.closed:
                self._push(self.clock.time() + _interval(stream), ref)

        write.add_done_callback(again)

    def _write(self, write: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self._loop.create_task(write)
        self._writes.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self._written)
        return task

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("heartbeat write failed", exc_info=task.exception())


def _interval(stream: Any) -> float:
    return float(stream.config.websocket_ping_interval or 0.0)


_heartbeats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeat] = (
    weakref.WeakKeyDictionary()
)


def heartbeat() -> Heartbeat:
    """The running loop's :class:`Heartbeat`."""
    loop = asyncio.get_running_loop()
    beat = _heartbeats.get(loop)
    if beat is None:
        beat = _heartbeats[loop] = Heartbeat(loop)
    return beat
