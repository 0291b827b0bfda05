"""One connection's outbound side, and the outbox that sends a tick's frames.

Quart's ``send`` waits for the socket to drain with no timeout, so a broadcast
that awaited each client in turn would stall on the first slow one; and a
writer task per connection, woken once per tick, costs a task switch and a
task's memory for every connection (measured: twice the CPU of a bare Quart
loop, 56 KiB per idle connection instead of 40).

So the hub only ever *enqueues*, synchronously, into each connection's pending
pieces (one per key: a newer piece merges into a pending one, so a slow reader
catches up to the current state rather than replaying history). Then:

- A tick's frames go out from one :class:`Outbox` task, one connection after the
  other, like the bare loop. Each send gets ``inline_timeout`` (2 ms) to 2x that: a
  healthy send only writes to the transport's buffer, while a client that stopped
  reading makes it wait for the buffer to drain. A connection whose send does not
  finish in time is *congested*, and the outbox never waits for it again until it has
  caught up; so a newly stalled client delays the others of its tick by 2-4 ms, once.
  (A healthy one misjudged on a busy loop merely sends from its own task until its
  next send goes through; the interrupted frame is sent again from there, since it may
  have been cut off before it was written.) The time is kept by one watchdog timer per
  batch, not one per send, and the outbox yields to the loop every ``YIELD_EVERY``
  sends, since the direct send (:func:`quartsig.hosting.text_sender`) does not yield
  by itself.
- Everything else (replies, a new subscriber's snapshot, a congested connection's
  frames) goes out from the connection's own drain task, which exists only while
  there is something to send. Its sends get ``send_timeout``; a client that takes
  no frame within it is hopeless and is closed with 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from quartsig.config import Settings
from quartsig.domain import protocol
from quartsig.domain.model import Key
from quartsig.domain.protocol import Close
from quartsig.fanout.hub import Piece

log = logging.getLogger(__name__)

TOO_SLOW = "too slow"
#: Sends in a row between two yields of the outbox to the loop (~0.5 ms of sends).
YIELD_EVERY = 32


class Timers(Protocol):
    """What the outbox's watchdog needs of time: an event loop has it."""

    def call_later(self, delay: float, callback: Callable[[], object], /) -> Timer: ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class Outbox:
    """Sends one tick's frames from a single task; see the module docstring.

    ``clock`` keeps the watchdog's time (the running loop unless one is given: tests move a
    clock by hand instead of hoping a busy machine keeps to 2 ms).
    """

    def __init__(self, inline_timeout: float = 0.002, clock: Timers | None = None) -> None:
        self.inline_timeout = inline_timeout
        self.clock = clock
        self.batching = False
        self._dirty: list[Connection] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The connection whose send ran out of time; the outbox task was cancelled for it.
        self.overdue: Connection | None = None
        #: The connection whose inline send is under way, and how many have started.
        self.sending: Connection | None = None
        self.sends = 0
        self._looked = -1  # ``sends`` when the watchdog last looked
        self._watchdog: Timer | None = None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Within this block, connections queue here instead of sending on their own."""
        self.batching = True
        try:
            yield
        finally:
            self.batching = False
            if self._dirty:
                self._ready.set()

    def add(self, connection: Connection) -> None:
        self._dirty.append(connection)

    def expire(self, connection: Connection) -> None:
        """Timer callback: ``connection``'s send took too long; interrupt it."""
        if self._task is not None:
            self.overdue = connection
            self._task.cancel()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="quartsig-outbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _watch(self) -> None:
        """Every ``inline_timeout`` while a batch goes out: a send that was already under way
        at the last look has had its time. One timer for the batch, where a timer per send
        was a tenth of the outbox's time (py-spy, 10 000 connections)."""
        sending = self.sending
        if sending is not None and self.sends == self._looked:
            self.sending = None  # expired once: the cancellation is on its way
            self.expire(sending)
        self._looked = self.sends
        self._watchdog = self._timers().call_later(self.inline_timeout, self._watch)

    def _timers(self) -> Timers:
        return self.clock if self.clock is not None else asyncio.get_running_loop()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            dirty, self._dirty = self._dirty, []
            self._looked = -1
            self._watchdog = self._timers().call_later(self.inline_timeout, self._watch)
            try:
                for count, connection in enumerate(dirty, 1):
                    connection.queued = False
                    try:
                        await connection.send_inline()
                    except Exception:  # one connection's bug must not stop everyone's frames
                        log.exception("outbox send failed")
                        connection.close(Close.NORMAL, "")
                    if count % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
            finally:
                if self._watchdog is not None:
                    self._watchdog.cancel()
                    self._watchdog = None


class Connection:
    __slots__ = ("_on_close", "_on_frame", "_outbox", "_pending", "_replies", "_resend", "_send",
                 "_sending", "_task", "closing", "conflated", "congested", "max_replies",
                 "queued", "send_timeout")

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        *,
        send_timeout: float = Settings.send_timeout,  # the default lives in config, once
        max_replies: int = 1024,
        outbox: Outbox | None = None,
        on_frame: Callable[[int, int], None] | None = None,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self._send = send
        self.send_timeout = send_timeout
        self.max_replies = max_replies
        self._outbox = outbox
        self._on_frame = on_frame
        self._on_close = on_close
        self._replies: list[str] = []  # a list: an empty deque is 760 B, idle or not
        #: A frame whose inline send was interrupted before it surely reached the transport.
        self._resend: str | None = None
        self._pending: dict[Key, Piece] = {}
        self._task: asyncio.Task[None] | None = None  # the own drain task, while needed
        self._sending = False  # the outbox is sending for this connection right now
        self.queued = False  # in the outbox's list for the current tick
        self.congested = False
        self.conflated = 0
        #: Why this connection must close, once someone decided it must: (code, reason).
        self.closing: tuple[int, str] | None = None

    # -- the hub's side (synchronous, never blocks) ----------------------------------------

    def deliver(self, key: Key, piece: Piece) -> None:
        earlier = self._pending.get(key)
        if earlier is None:
            self._pending[key] = piece
        else:
            self._pending[key] = earlier.merge(piece)
            self.conflated += 1
        self._wake()

    def discard(self, key: Key) -> None:
        self._pending.pop(key, None)

    def send(self, text: str) -> None:
        if len(self._replies) >= self.max_replies:
            self.close(Close.TRY_AGAIN_LATER, TOO_SLOW)  # sends ops, never reads the replies
            return
        self._replies.append(text)
        self._wake()

    def close(self, code: int, reason: str, *, interrupt: bool = True) -> None:
        """Decide that this connection closes with ``code``; the first decision wins.
        ``interrupt`` calls ``on_close`` (the route: stop reading) unless it is the caller."""
        if self.closing is None:
            self.closing = (code, reason)
            if interrupt and self._on_close is not None:
                self._on_close()

    @property
    def backlog(self) -> int:
        return len(self._replies) + len(self._pending) + (self._resend is not None)

    # -- sending ---------------------------------------------------------------------------

    def take(self) -> str | None:
        """Everything pending as one frame: replies first, then one piece per key. A frame to
        send again goes first, alone: everything pending is newer than it."""
        if self._resend is not None:
            frame, self._resend = self._resend, None
            return frame
        if not self._replies and not self._pending:
            return None
        # Copied and cleared in place, not swapped for a new list: a new list per connection
        # per tick would be one more object surviving into the collector's older generations.
        pieces = self._replies[:]
        self._replies.clear()
        pieces.extend(piece.encoded(key) for key, piece in self._pending.items())
        self._pending.clear()
        return protocol.join(pieces)

    def _wake(self) -> None:
        if self._task is not None or self._sending or self.closing is not None:
            return  # whoever is sending takes what is pending when done
        if self._outbox is not None and self._outbox.batching and not self.congested:
            if not self.queued:
                self.queued = True
                self._outbox.add(self)
        else:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def send_inline(self) -> None:
        """The outbox's send: short, so one stuck client cannot hold up the tick."""
        if self._task is not None or self._sending or self.closing is not None:
            return
        if self.congested:
            self._wake()
            return
        frame = self.take()
        if frame is None:
            return
        outbox = self._outbox
        assert outbox is not None
        self._sending = True
        outbox.sending = self  # the outbox's watchdog times this send
        outbox.sends += 1
        try:
            await self._send(frame)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if outbox.overdue is not self or task is None or task.uncancel() > 0:
                raise
            outbox.overdue = None
            self.congested = True
            # Quart's send yields once *before* it writes (``asyncio.sleep(0)``), and so does
            # the direct send while another write (a ping) holds the stream's send lock; a
            # full transport yields after. The watchdog may have met either, so whether the
            # frame was written is unknown. It is sent again from the connection's own task: a
            # frame cut off before the write would be lost for good (a card stale until its
            # next change; test_cluster saw it on a loaded machine), while one written twice
            # changes nothing (snapshots and updates set values; a reply comes twice).
            self._resend = frame
        except Exception as error:  # the peer is gone; its handler will notice
            log.debug("send failed: %r", error)
            self.close(Close.NORMAL, "")
            return
        else:
            self._sent(frame)
        finally:
            outbox.sending = None
            self._sending = False
        if self.backlog:  # delivered while this send was under way
            self._wake()

    async def _drain(self) -> None:
        """The own task: send until nothing is pending, each send within ``send_timeout``."""
        sent = False
        try:
            while (frame := self.take()) is not None:
                try:
                    async with asyncio.timeout(self.send_timeout):
                        await self._send(frame)
                except TimeoutError:
                    self.close(Close.TRY_AGAIN_LATER, TOO_SLOW)
                    return
                except Exception as error:
                    log.debug("send failed: %r", error)
                    self.close(Close.NORMAL, "")
                    return
                self._sent(frame)
                sent = True
            if sent:
                self.congested = False  # it took frames again: the outbox may send for it
        finally:
            self._task = None

    def _sent(self, frame: str) -> None:
        if self._on_frame is not None:
            # Bytes on the wire: a frame is UTF-8, and most are ASCII (one byte a character).
            self._on_frame(1, len(frame) if frame.isascii() else len(frame.encode()))

    async def flush(self, within: float) -> None:
        """Send what is pending before a deliberate close (the own task is stopped first)."""
        await self.dispose()
        frame = self.take()
        if frame is not None:
            async with asyncio.timeout(within):
                await self._send(frame)

    async def dispose(self) -> None:
        """Stop the own drain task, if any."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
