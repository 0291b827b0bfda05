"""The gaps in Hypercorn 0.18 that quartsig closes, on every way of launching it.

``create_app()`` calls :func:`harden`, so the fixes apply under ``quartsig serve``, under
``hypercorn -c hypercorn.toml 'quartsig.app:create_app()'`` and under any host that builds the
app in a process that has Hypercorn: Hypercorn's protocols build quartsig's websocket stream
(:mod:`~quartsig.hosting.streams`, a subclass), which serves each app with that app's limits
(:mod:`~quartsig.hosting.limits`), pings through one heap per loop
(:mod:`~quartsig.hosting.heartbeat`) and offers a direct send (:mod:`~quartsig.hosting.sender`).
What the subclass relies on is pinned and checked by name (:mod:`~quartsig.hosting.pin`).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from quartsig.config import Settings
from quartsig.hosting.heartbeat import Heartbeat, heartbeat
from quartsig.hosting.limits import StreamLimits, limits_of, register
from quartsig.hosting.pin import HYPERCORN_VERSIONS, PATCHED, HostingError, missing, resolve
from quartsig.hosting.sender import SEND_EXTENSION, frame_text, text_sender
from quartsig.hosting.streams import CappedBuffer, Stream, install

__all__ = [
    "HYPERCORN_VERSIONS", "PATCHED", "SEND_EXTENSION", "CappedBuffer", "Heartbeat",
    "HostingError", "Stream", "StreamLimits", "frame_text", "harden", "heartbeat", "install",
    "limits_of", "missing", "register", "resolve", "text_sender",
]


def harden(app: Any, settings: Settings) -> None:
    """Make this process's Hypercorn run ``app``'s websockets with ``settings``'s limits.

    Idempotent, and per app: another app in the process keeps its own limits. Raises
    :class:`HostingError`, naming what is gone, when an upgraded Hypercorn no longer has what
    the subclass relies on: better no server than one that looks hardened.
    """
    problems = missing()
    if problems:
        version = metadata.version("hypercorn")
        raise HostingError(
            f"Hypercorn {version} is not one quartsig can harden ({'; '.join(problems)}); "
            f"install hypercorn{HYPERCORN_VERSIONS}"
        )
    install()
    register(app, StreamLimits.from_settings(settings))
