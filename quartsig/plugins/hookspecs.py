"""The hooks a quartsig plugin can implement.

These docstrings are the plugin reference: ``docs/plugins.md`` quotes them and a
test keeps the two in step. Plugins mark their functions with :data:`hookimpl`
(``from quartsig.plugins.hookspecs import hookimpl``); the built-in profiles do the same,
so there is one code path for built-in and third-party code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import pluggy

from quartsig.plugins.profiles import Profile

if TYPE_CHECKING:
    from quartsig.alerts.channels import Channel

PROJECT = "quartsig"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_profiles() -> Iterable[Profile]:  # type: ignore[empty-body]
    """Contribute indicator profiles that clients can subscribe to.

    Called once at start-up. Each profile names the base columns it needs and a pure
    ``compute(row) -> dict`` that turns one scanner row (keyed by base column name, a
    missing key meaning null) into the flat JSON object sent to clients.

    :return: an iterable (usually a list) of :class:`quartsig.plugins.profiles.Profile`. Two
        profiles with one name, from any plugins, stop start-up with an error naming
        both plugins; so does anything in the iterable that is not a ``Profile``.
    """


@hookspec
def register_screeners() -> Mapping[str, str]:  # type: ignore[empty-body]
    """Extend or override the exchange -> TradingView screener table.

    Called once at start-up. The exchange prefix of a symbol (``BINANCE`` in
    ``BINANCE:BTCUSDT``) picks the screener its scanner request goes to; use this hook
    for an exchange quartsig does not know, or to send one to a different screener.

    :return: a mapping of exchange prefix to screener name, e.g. ``{"MOEX": "russia"}``.
        Prefixes are case-insensitive (upper-cased on load); plugins loaded later win
        over earlier ones and over the built-in table.
    """


@hookspec
def register_channels() -> Iterable[Channel]:  # type: ignore[empty-body]
    """Contribute alert channels: where a rule's triggers can be sent (docs/alerts.md).

    Called once when the alerts start. Each channel has a ``kind`` (stored with every
    endpoint a user adds: ``"webhook"``, ``"telegram"``, ``"slack"``) and
    ``async send(message, target) -> Outcome``, which tries once and says how it went
    (:class:`quartsig.alerts.channels.Outcome`): retries, back-off and disabling endpoints are
    the delivery worker's; ``Outcome("later", retry_after=...)`` puts a delivery off without
    counting a try (a channel waiting its turn under a rate limit). A channel for people may
    also have ``async send_digest(messages, target)``: several deliveries due together for one
    endpoint then arrive in one call. The built-in webhook and telegram channels come through
    this same hook.

    :return: an iterable of channels; two of one kind, from any plugins, stop start-up.
    """
