"""A bare hub as a broker's handler, where no ``State`` is (benchmarks, tests of the feed).

A serving node's handler is its ``State``, which also remembers rejected symbols and sends each
batch's frames together; this one hands batches to ``deliver`` (the hub's own ``apply`` by
default) and answers the rest from the hub.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet

from quartsig.domain.model import Batch, Key
from quartsig.fanout.hub import Hub


class HubAnswers:
    """The handler's questions a hub answers (what is watched, held, newly asked for), written
    once for :class:`HubHandler` and the serving node's ``State``; a subclass has ``hub``."""

    hub: Hub

    def watched(self) -> set[Key]:
        return self.hub.demand()

    def held(self) -> AbstractSet[Key]:
        return self.hub.entries.keys()

    async def asked(self) -> set[Key]:
        await self.hub.fresh_added.wait()
        self.hub.fresh_added.clear()
        return set(self.hub.fresh)


class HubHandler(HubAnswers):
    def __init__(self, hub: Hub, deliver: Callable[[Batch], object] | None = None) -> None:
        self.hub = hub
        self.deliver = deliver or hub.apply

    def apply(self, batch: Batch) -> object:
        return self.deliver(batch)
