"""The seam between the collector, which makes values, and the hubs, which hand them out.

One process (:class:`~quartsig.cluster.memory.MemoryBroker`): the collector's batch goes straight
into this process's hub. A cluster (:class:`~quartsig.cluster.redis.RedisBroker`): one node at a
time holds a fenced lease and collects; its batches go through Redis to every node's hub. The hub
and the connections never know which runs; the collector asks the broker three things: may I
collect (:meth:`Broker.leadership`), what is wanted (:meth:`Broker.demand`, :meth:`Broker.wanted`),
and publish this (:meth:`Broker.publish`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from quartsig.domain.model import Batch, Key

#: What a node does with a batch: apply it to its hub (``State.apply``).
Deliver = Callable[[Batch], object]


class Broker(Protocol):
    #: "standalone" (no cluster), "leader" or "follower".
    role: str
    #: The fencing term this node last led or saw (0 standalone).
    term: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    # -- the collector's side -------------------------------------------------------------

    async def leadership(self) -> None:
        """Return once this node may collect (at once standalone)."""

    def leading(self) -> bool:
        """Whether this node still may collect; checked between ticks."""

    async def demand(self) -> set[Key]:
        """Every key somebody watches, on any node: what a full tick fetches."""

    async def wanted(self) -> set[Key]:
        """Wait until keys nobody has data for (new to the whole cluster) are asked for;
        what they are, without taking them."""

    def wanted_now(self) -> set[Key]:
        """Take the keys asked for so far (possibly none). Memory returns a key again until it
        has data; Redis returns each request once, so the collector owes what it takes."""

    async def publish(self, batch: Batch) -> bool:
        """Hand ``batch`` to every node; False when this node was fenced off (not the leader)."""

    # -- the node's side -----------------------------------------------------------------

    def cluster_keys(self) -> int:
        """Distinct keys the whole cluster watched at the last count (0 without a cluster,
        where the hub counts its own): what ``QUARTSIG_MAX_KEYS`` caps, since every node's
        keys cost the one collector's requests."""

    def health(self) -> dict[str, object]:
        """Role, term and the broker's own state, for ``/healthz``."""
