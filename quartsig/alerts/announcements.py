"""Announcements: the triggers just written, told to every node's delivery worker at once.

Without a cluster the recorder and the worker share a process and an event wakes the worker.
In a cluster the recorder runs on the leader and any node may deliver, so the trigger ids
written by a committed transaction are announced on a Redis stream read by a consumer group
(each entry reaches one node; an entry left pending by a node that died is taken over once it
has been idle longer than a claim's lease). The database row stays the truth: an announcement
only says "look now", so one lost (Redis away, a crash between the commit and the XADD) costs
the time until the worker's slower poll of the database, never the delivery.

The protocol lives here, beside its user, because ``alerts`` and ``cluster`` are sibling
layers: the Redis implementation (:mod:`quartsig.cluster.deliveries`) satisfies it
structurally, without importing it, and the app (layer 7) wires the two together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Announcements(Protocol):
    async def announce(self, triggers: Sequence[int]) -> None:
        """Tell the deliverers these triggers were written (after their commit)."""

    async def read(self, block: float) -> list[tuple[bytes, int]]:
        """The next announcements for this node as (entry id, trigger id): first those a dead
        consumer left pending past the lease, then new ones, waiting up to ``block`` seconds.
        Malformed entries are dropped (and acknowledged) by the implementation."""

    async def ack(self, entries: Sequence[bytes]) -> None:
        """The entries' deliveries were claimed and marked: they need no other node."""

    async def close(self) -> None: ...
