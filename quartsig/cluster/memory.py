"""One process: the collector's batches go straight into this process's hub."""

from __future__ import annotations

from quartsig.cluster.broker import Deliver
from quartsig.domain.model import Batch, Key
from quartsig.fanout.hub import Hub


class MemoryBroker:
    """Always the leader of a cluster of one; demand is the hub's."""

    role = "standalone"
    term = 0

    def __init__(self, hub: Hub, deliver: Deliver) -> None:
        self.hub = hub
        self.deliver = deliver

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def leadership(self) -> None:
        return None

    def leading(self) -> bool:
        return True

    async def demand(self) -> set[Key]:
        return self.hub.demand()

    async def wanted(self) -> set[Key]:
        await self.hub.fresh_added.wait()
        self.hub.fresh_added.clear()
        return set(self.hub.fresh)

    def wanted_now(self) -> set[Key]:
        self.hub.fresh_added.clear()
        return set(self.hub.fresh)

    async def publish(self, batch: Batch) -> bool:
        self.deliver(batch)
        return True

    def cluster_keys(self) -> int:
        return 0

    def health(self) -> dict[str, object]:
        return {"role": self.role, "term": self.term}
