"""The seam between the collector, which makes values, and the nodes, which hand them out.

Two protocols meet here. A :class:`Broker` is what the collector talks to: may I collect, what
is watched, what is new, publish this. A :class:`Handler` is what a broker talks to on its own
node: apply this batch, which keys are watched or held here, which keys are new here. The
broker never sees the hub; ``State`` is the handler of a serving node
(:meth:`quartsig.state.State.apply` is where values enter), and a broker is picked by the URL's
scheme (:func:`quartsig.cluster.backends.open_broker`): memory without a URL, Redis with one.

Every member means the same on both backends, so one conformance suite
(``tests/test_broker_conformance.py``) runs every scenario against both.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from quartsig.domain.model import Batch, Key

#: A broker's long-lived loops by name: plain coroutine functions that a supervisor may restart;
#: each catches what its own work raises (Redis errors, bad entries) and carries on.
Loops = Mapping[str, Callable[[], Coroutine[Any, Any, None]]]


class Handler(Protocol):
    """What a broker may ask of its node, and nothing more."""

    def apply(self, batch: Batch) -> object:
        """Values, rejections, failures, notices and status, as one step (the one way in)."""

    def watched(self) -> set[Key]:
        """Keys a client of this node watches now: what the node advertises."""

    def held(self) -> AbstractSet[Key]:
        """Keys this node holds values for (or awaits): what a value from elsewhere may change."""

    async def asked(self) -> set[Key]:
        """Wait until a client asks for a key new to this node; the keys still without data."""


class Broker(Protocol):
    """What the collector and the node's routes ask of the cluster (a cluster of one in memory)."""

    @property
    def term(self) -> int:
        """The fencing term this node last led or saw (0 standalone); batches carry it."""

    async def start(self) -> None:
        """Join (in a cluster: check this node belongs, run :meth:`loops`); raise if it may not."""

    async def stop(self) -> None:
        """Leave: release the lead so another node takes it at once."""

    def loops(self) -> Loops:
        """The long-lived loops :meth:`start` runs, for whoever supervises them."""

    async def leadership(self) -> None:
        """Return once this node may collect (at once standalone)."""

    def leading(self) -> bool:
        """Whether this node still may collect; checked between ticks."""

    async def demand(self) -> set[Key]:
        """Every key somebody watches, on any node: what a full tick fetches."""

    async def wanted(self) -> set[Key]:
        """Wait until keys new to everyone are asked for; which ones, without taking them."""

    def wanted_now(self) -> set[Key]:
        """Take the keys asked for so far (possibly none): each request is handed out once,
        so the collector owes what it takes (a full tick serves whatever it could not)."""

    async def publish(self, batch: Batch) -> bool:
        """Hand ``batch`` to every node; False when this node may not (fenced, not leading)."""

    def cluster_keys(self) -> int:
        """Distinct keys watched on every node together at the last count: what
        ``QUARTSIG_MAX_KEYS`` caps, since every node's keys cost the one collector's requests."""

    def health(self) -> dict[str, object]:
        """Role (``standalone``, ``leader``, ``follower``), term and the backend's own state."""
