"""Ports, plain HTTP, and waiting for conditions: what every harness here and in bench/ needs.

The waits take generous deadlines and poll a condition: a test states what it waits for,
never how long it hopes that takes, so a busy machine makes it slower, not red.

- :func:`free_port`, :func:`wait_listening`;
- :func:`http`, :func:`http_json`: blocking (sync tests, benchmarks, threads);
  :func:`ahttp`, :func:`ahttp_json`: the same off the event loop, for async tests;
- :func:`wait_until` (sync) and :func:`eventually` (async) poll a predicate.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Deadline for waits that only a broken server misses (seconds).
PATIENCE = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; closed again before return)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """A tiny blocking HTTP call (no third-party client needed); returns (status, body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    """:func:`http` that fails on a status >= 400 and decodes the JSON answer."""
    status, payload = http(method, url, body, timeout)
    if status >= 400:
        raise AssertionError(f"{method} {url} -> {status}: {payload[:500]!r}")
    return json.loads(payload or b"null")


async def ahttp(method: str, url: str, body: Any = None) -> tuple[int, bytes]:
    """:func:`http` in a thread, so the test's event loop (and its clients) keep running."""
    return await asyncio.to_thread(http, method, url, body)


async def ahttp_json(method: str, url: str, body: Any = None) -> Any:
    return await asyncio.to_thread(http_json, method, url, body)


def _timed_out(what: str, timeout: float, last_error: Exception | None) -> AssertionError:
    return AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f" (last error: {last_error!r})" if last_error else "")
    )


def wait_until(predicate: Callable[[], T], timeout: float = PATIENCE, interval: float = 0.1,
               what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; an exception
    counts as "not yet". Fails after ``timeout`` seconds. Blocking: for sync code only."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
        except Exception as error:
            last_error = error
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            raise _timed_out(what or repr(predicate), timeout, last_error)
        time.sleep(interval)


async def eventually(predicate: Callable[[], T | Awaitable[T]], within: float = PATIENCE,
                     interval: float = 0.05, what: str = "") -> T:
    """:func:`wait_until` for async tests: ``predicate`` may be sync or async (a sync one
    must not block: wrap blocking calls in :func:`asyncio.to_thread`)."""
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
        except Exception as error:
            last_error = error
        else:
            if result:
                return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _timed_out(what or repr(predicate), within, last_error)
        await asyncio.sleep(interval)


async def wait_listening(port: int, host: str = "127.0.0.1", within: float = PATIENCE) -> None:
    """Until something accepts TCP connections on ``port``."""

    async def accepts() -> bool:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    await eventually(accepts, within, 0.02, f"{host}:{port} to listen")
