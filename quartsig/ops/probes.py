"""A tiny HTTP server for ``quartsig collect``'s probes and metrics (``QUARTSIG_COLLECT_BIND``).

A collector serves no sockets, so it has no Hypercorn; yet an operator must see whether it
lives, whether it can serve fresh data and what its metrics say (issue #24.4). Three GET routes
over plain asyncio streams are all it needs: no framework, nothing else exposed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

#: What a route returns: status, content type, body.
Answer = tuple[int, str, bytes]
Route = Callable[[], Answer]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
#: Seconds a client has to send its request line and headers.
READ_TIMEOUT = 5.0


def respond(routes: Mapping[str, Route], request_line: bytes) -> Answer:
    """The answer to one request line (``GET /readyz HTTP/1.1``); pure, so tests need no
    socket."""
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3:
        return 404, "text/plain", b"not found\n"
    method, target, _ = parts
    route = routes.get(target.partition("?")[0])
    if route is None:
        return 404, "text/plain", b"not found\n"
    if method not in ("GET", "HEAD"):
        return 405, "text/plain", b"only GET\n"
    return route()


async def serve(bind: str, routes: Mapping[str, Route]) -> asyncio.Server:
    """Listen on ``bind`` (``host:port``); raises ``OSError`` when it cannot."""
    host, _, port = bind.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                line = await reader.readline()
                while (await reader.readline()).strip():  # headers: read, ignored
                    pass
            status, kind, body = respond(routes, line)
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                    f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (b"" if line.startswith(b"HEAD") else body))
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host.strip("[]") or "127.0.0.1", int(port))
