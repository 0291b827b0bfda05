"""Channels: where a trigger goes (a webhook, Telegram, a plugin's Slack or e-mail).

A channel is a plugin: the ``register_channels`` hook returns :class:`Channel` objects, and
the built-in ones come through that same hook (:func:`load_channels` registers this package's
built-ins into the plugin manager first), so a third party's channel takes the same path.

A channel does one thing: try to send one message to one target and say how it went
(:class:`Outcome`). What to do next (mark it sent, try again when, disable the endpoint) is the
delivery worker's decision, the same for every channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import pluggy

from quartsig.plugins.hookspecs import hookimpl

#: sent: done. retry: try again later (``retry_after`` seconds if the far end said).
#: gone: the endpoint no longer exists (HTTP 410): disable it. blocked: the user blocked us
#: (Telegram 403): mark the channel blocked. failed: will never work (a bad request).
#: later: not tried at all (a pace says wait, the bot is not up yet): due again after
#: ``retry_after`` without counting an attempt, so waiting one's turn never uses up the day of
#: retries a delivery has.
Status = Literal["sent", "retry", "later", "gone", "blocked", "failed"]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    error: str = ""
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One trigger as every channel sees it."""

    id: str  # stable across retries: receivers dedupe on it (``webhook-id``)
    payload: Mapping[str, Any]  # the JSON body of a webhook; what a message says
    text: str  # one line for people (Telegram, e-mail subjects)


@dataclass(frozen=True, slots=True)
class Target:
    """One channel row: where to, and its secret."""

    id: int
    kind: str
    address: str
    secret: str | None = None


@runtime_checkable
class Channel(Protocol):
    #: The ``kind`` stored with each endpoint: ``webhook``, ``telegram``, ``slack``...
    kind: str

    async def send(self, message: Message, target: Target) -> Outcome: ...


@runtime_checkable
class Digesting(Protocol):
    """A channel for people (Telegram, e-mail) may also have ``send_digest``: when several of
    a target's deliveries are due at once, the delivery worker claims them together and hands
    them over in one call, so a burst arrives as one message instead of a flood. One outcome
    applies to all of them. A channel for machines (webhooks) sends one by one."""

    async def send_digest(self, messages: Sequence[Message], target: Target) -> Outcome: ...


class ChannelError(RuntimeError):
    """A plugin's channels cannot be used; the message names the plugin."""


def load_channels(pm: pluggy.PluginManager,
                  builtins: Iterable[object] = ()) -> dict[str, Channel]:
    """Every channel by kind, from ``register_channels`` of every plugin; ``builtins``
    (plugin objects such as this package's :mod:`quartsig.alerts.webhooks`) are registered
    first if they are not yet. Two channels of one kind stop start-up."""
    for plugin in builtins:
        if not pm.is_registered(plugin):
            pm.register(plugin)
    found: dict[str, Channel] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.register_channels.get_hookimpls():
        plugin = impl.plugin_name
        returned = impl.function() or ()
        if not isinstance(returned, Iterable):
            raise ChannelError(f"plugin {plugin!r}: register_channels must return an iterable")
        for channel in returned:
            if not isinstance(channel, Channel) or not isinstance(channel.kind, str):
                raise ChannelError(f"plugin {plugin!r}: register_channels returned "
                                   f"{channel!r}, not a channel with a kind and send()")
            if channel.kind in found:
                raise ChannelError(f"channel kind {channel.kind!r} comes from both "
                                   f"{owners[channel.kind]!r} and {plugin!r}")
            found[channel.kind] = channel
            owners[channel.kind] = plugin
    return found


__all__ = ["Channel", "ChannelError", "Digesting", "Message", "Outcome", "Status", "Target",
           "hookimpl", "load_channels"]
