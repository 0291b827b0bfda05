"""One process: the collector's batches go straight to this node's handler."""

from __future__ import annotations

from quartsig.cluster.broker import Handler, Loops
from quartsig.domain.model import Batch, Key


class MemoryBroker:
    """Always the leader of a cluster of one; demand is this node's."""

    term = 0

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._wanted: set[Key] = set()
        self._counted = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def loops(self) -> Loops:
        return {}

    async def leadership(self) -> None:
        return None

    def leading(self) -> bool:
        return True

    async def demand(self) -> set[Key]:
        demand = self.handler.watched()
        self._counted = len(demand)
        return demand

    async def wanted(self) -> set[Key]:
        if not self._wanted:
            self._wanted |= await self.handler.asked()
        return set(self._wanted)

    def wanted_now(self) -> set[Key]:
        keys, self._wanted = self._wanted, set()
        return keys

    async def publish(self, batch: Batch) -> bool:
        self.handler.apply(batch)
        return True

    def cluster_keys(self) -> int:
        return self._counted

    def health(self) -> dict[str, object]:
        return {"role": "standalone", "term": self.term}
