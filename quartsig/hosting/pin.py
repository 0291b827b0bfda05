"""The Hypercorn releases quartsig's subclasses were written against, and the check of them.

``pyproject.toml`` pins :data:`HYPERCORN_VERSIONS`; :func:`missing` names what of
:data:`PATCHED` an upgrade took away or changed (``harden`` then refuses to start rather than
serve unhardened), and ``tests/test_hosting.py`` fails by name when that happens.
"""

from __future__ import annotations

import contextlib
import inspect
from importlib import import_module
from typing import Any

from quartsig.config import ConfigError

HYPERCORN_VERSIONS = ">=0.18,<0.19"
"""The Hypercorn releases whose internals below were read; ``pyproject.toml`` says the same."""

#: Every Hypercorn name quartsig overrides, replaces or relies on -> the parameters it must
#: have. ``None``: a class, constant or module attribute (no signature to check).
PATCHED: dict[str, tuple[str, ...] | None] = {
    "hypercorn.asyncio.tcp_server.TCPServer.run": ("self",),  # quartsig.hosting.sockets
    "hypercorn.protocol.ws_stream.WSStream.__init__": (
        "self", "app", "config", "context", "task_group", "ssl", "client", "server", "send",
        "stream_id",
    ),
    "hypercorn.protocol.ws_stream.WSStream.handle": ("self", "event"),
    "hypercorn.protocol.ws_stream.WSStream._send_pings": ("self",),
    "hypercorn.protocol.ws_stream.WSStream._send_wsproto_event": ("self", "event"),
    "hypercorn.protocol.ws_stream.WSStream._accept": ("self", "message"),
    # ``Stream._accept`` empties the client's offer, which ``accept`` negotiates from.
    "hypercorn.protocol.ws_stream.Handshake.__init__": ("self", "headers", "http_version"),
    "hypercorn.protocol.ws_stream.Handshake.accept": ("self", "subprotocol",
                                                      "additional_headers"),
    "hypercorn.protocol.ws_stream.ASGIWebsocketState.CONNECTED": None,
    "wsproto.connection.ConnectionState.OPEN": None,
    "hypercorn.protocol.ws_stream.WebsocketBuffer.extend": ("self", "event"),
    "hypercorn.protocol.ws_stream.WebsocketBuffer.__init__": ("self", "max_length"),
    "hypercorn.protocol.ws_stream.FrameTooLargeError": None,
    "hypercorn.protocol.events.StreamClosed": None,
    "hypercorn.protocol.events.Data": None,
    # Where ``streams.install`` puts the subclass: the protocols read the class from here.
    "hypercorn.protocol.h11.WSStream": None,
    "hypercorn.protocol.h2.WSStream": None,
}


class HostingError(ConfigError):
    """This process's Hypercorn lacks what quartsig's fixes rely on (the CLI exits 2)."""


def resolve(dotted: str) -> Any:
    """The object a dotted name points at (ImportError/AttributeError name what is gone)."""
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
            target = resolve(dotted)
        except (ImportError, AttributeError):
            problems.append(f"{dotted} is gone")
            continue
        if parameters is not None:
            found: tuple[str, ...] = ()
            with contextlib.suppress(TypeError, ValueError):
                found = tuple(inspect.signature(target).parameters)
            if found != parameters:
                problems.append(f"{dotted}{found} is not {dotted}{parameters}")
    return problems
