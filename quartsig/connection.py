"""One connection's outbound side: a conflating queue and the single task that writes it.

Quart's ``send`` waits for the socket to drain with no timeout, so a broadcast
that awaited each client in turn would stall on the first slow one. Instead the
hub only ever *enqueues* (synchronously, never blocking), and each connection's
own writer sends whatever is pending as one frame. While a send is stuck, new
pieces for the same key merge into one, so the queue holds at most one piece
per subscribed key and a slow reader catches up to the current state rather
than replaying history. A send that stays stuck past ``send_timeout`` means the
client is hopeless: the writer gives up with :class:`SlowConsumer` (close 1013).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from . import protocol
from .hub import Piece
from .planner import Key


class SlowConsumer(Exception):
    """The client has not taken a frame within the send timeout (close 1013)."""


class Overflow(Exception):
    """Replies piled up past their bound: the client sends but never reads (close 1013)."""


class Connection:
    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        *,
        send_timeout: float = 10.0,
        max_replies: int = 1024,
        on_frame: Callable[[int, int], None] | None = None,
    ) -> None:
        self._send = send
        self.send_timeout = send_timeout
        self.max_replies = max_replies
        self._on_frame = on_frame
        self._replies: deque[str] = deque()
        self._pending: dict[Key, Piece] = {}
        self._wake = asyncio.Event()
        self.conflated = 0
        self.overflowed = False
        self.user: int | None = None
        self._close_request: asyncio.Future[tuple[int, str]] = (
            asyncio.get_running_loop().create_future()
        )

    def close(self, code: int, reason: str) -> None:
        """Ask the connection's handler to close with ``code``; the first request wins."""
        if not self._close_request.done():
            self._close_request.set_result((code, reason))

    async def close_requested(self) -> tuple[int, str]:
        return await asyncio.shield(self._close_request)

    # -- the hub's side (synchronous, never blocks) ----------------------------------------

    def deliver(self, key: Key, piece: Piece) -> None:
        earlier = self._pending.get(key)
        if earlier is None:
            self._pending[key] = piece
        else:
            self._pending[key] = earlier.merge(piece)
            self.conflated += 1
        self._wake.set()

    def discard(self, key: Key) -> None:
        self._pending.pop(key, None)

    def send(self, text: str) -> None:
        if len(self._replies) >= self.max_replies:
            self.overflowed = True
        else:
            self._replies.append(text)
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._replies) + len(self._pending)

    # -- the writer task -------------------------------------------------------------------

    def take(self) -> str | None:
        """Everything pending as one frame: replies first, then one piece per key."""
        if not self._replies and not self._pending:
            return None
        pieces = list(self._replies)
        self._replies.clear()
        pieces.extend(piece.encoded(key) for key, piece in self._pending.items())
        self._pending.clear()
        return protocol.join(pieces)

    async def run(self) -> None:
        """Write frames until cancelled; raise :class:`SlowConsumer` or :class:`Overflow`."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.overflowed:
                raise Overflow("too many unread replies")
            frame = self.take()
            if frame is None:
                continue
            try:
                async with asyncio.timeout(self.send_timeout):
                    await self._send(frame)
            except TimeoutError:
                raise SlowConsumer(f"no progress for {self.send_timeout:g} s") from None
            if self._on_frame is not None:
                self._on_frame(1, len(frame))

    async def flush(self, within: float) -> None:
        """Send what is pending (used before a deliberate close)."""
        frame = self.take()
        if frame is not None:
            async with asyncio.timeout(within):
                await self._send(frame)
