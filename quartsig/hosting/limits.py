"""Each app's side of its websocket streams: the ping interval and the message cap.

The rule lives here once: quartsig's ping interval, and the smaller of Hypercorn's
``websocket_max_message_size`` and 4 x ``QUARTSIG_MAX_FRAME_BYTES`` (a batch of frames, never
more). ``quartsig serve`` writes it into its Hypercorn config (:meth:`StreamLimits.apply`);
every stream also derives it from whatever config it was given (:meth:`StreamLimits.config_for`),
so ``hypercorn -c hypercorn.toml 'quartsig.app:create_app()'`` gets it too.

Limits belong to an app, not to the process: two apps in one process (tests, a host mounting
both) each keep their own, found from the ASGI app a stream serves (:func:`limits_of`).
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quartsig.config import Settings

if TYPE_CHECKING:
    from hypercorn.config import Config


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

    def apply(self, config: Config) -> Config:
        """Write the limits into Hypercorn's ``config`` (changed in place and returned)."""
        config.websocket_ping_interval = self.ping_interval
        config.websocket_max_message_size = min(config.websocket_max_message_size,
                                                self.max_message_size)
        return config

    def config_for(self, config: Any) -> Any:
        """``config`` with the limits in it: one copy per config and limits, the original
        left alone (Hypercorn shares one config among every stream of a worker)."""
        copies = _copies.get(config)
        if copies is None:
            copies = _copies[config] = {}
        derived = copies.get(self)
        if derived is None:
            config.log  # noqa: B018 (built once here, so every copy shares the loggers)
            derived = copies[self] = self.apply(copy.copy(config))
        return derived


_copies: weakref.WeakKeyDictionary[Any, dict[StreamLimits, Any]] = weakref.WeakKeyDictionary()
_apps: weakref.WeakKeyDictionary[Any, StreamLimits] = weakref.WeakKeyDictionary()


def register(app: Any, limits: StreamLimits) -> None:
    """Streams serving ``app`` get ``limits`` (the latest registration for that app wins)."""
    _apps[app] = limits


def limits_of(app: Any) -> StreamLimits | None:
    """The limits registered for ``app``, or for the app inside Hypercorn's wrapper of it.

    None for an app quartsig did not build: its streams keep Hypercorn's own settings.
    """
    for candidate in (app, getattr(app, "app", None)):
        try:
            limits = _apps.get(candidate)
        except TypeError:  # not weakly referenceable: not one of ours
            continue
        if limits is not None:
            return limits
    return None
