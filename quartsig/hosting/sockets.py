"""How many TCP connections this process's Hypercorn has served, and how many ended.

:class:`quartsig.ops.freezer.Freezer` thaws by it: a connection that ended may have died in a
cycle while frozen. Every socket counts, not only admitted websockets: one that hangs up
before its upgrade leaves a task and its coroutines in a cycle too (seen: the flood test's
task count one above its baseline when only admitted websockets counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypercorn.asyncio import tcp_server

__all__ = ["Sockets", "count_sockets"]


@dataclass
class Sockets:
    """How many TCP connections Hypercorn has served so far, and how many of them ended."""

    opened: int = 0
    closed: int = 0


def count_sockets() -> Sockets:
    """Count every TCP connection Hypercorn's asyncio worker serves from now on (wraps
    ``TCPServer.run``, pinned in :data:`quartsig.hosting.pin.PATCHED`); idempotent: one count
    per process."""
    run = tcp_server.TCPServer.run
    counted: Sockets | None = getattr(run, "sockets", None)
    if counted is not None:
        return counted
    sockets = Sockets()

    async def counting(self: Any) -> None:
        sockets.opened += 1
        try:
            await run(self)
        finally:
            sockets.closed += 1

    counting.sockets = sockets  # type: ignore[attr-defined]
    tcp_server.TCPServer.run = counting  # type: ignore[method-assign]
    return sockets
