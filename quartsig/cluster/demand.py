"""What the cluster watches: every node advertises its keys, the leader reads them all.

Each node refreshes its keys in ``demand`` (a sorted set scored by expiry, Redis's clock), so a
dead node's keys leave within :data:`DEMAND_TTL`. Keys new to the whole cluster also go on the
``wanted`` stream, which the leader reads to fetch them early. The leader drops from ``latest``
whatever nobody demands: incrementally each tick, and all of it whenever it starts a term (a
predecessor's leftovers) or every :data:`SWEEP_EVERY` seconds (forged fields), so ``latest``
stays the size of the demand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from quartsig.cluster.broker import Handler
from quartsig.cluster.codec import Codec, Untrusted, key_name
from quartsig.cluster.election import Election
from quartsig.cluster.redis import WANTED_LENGTH, Store, guarded
from quartsig.domain.model import Key

#: Seconds between a node's refreshes of its demand, and how long a refresh lasts.
ADVERTISE_EVERY = 2.0
DEMAND_TTL = 10.0
#: Seconds between two sweeps of ``latest`` by one leader.
SWEEP_EVERY = 60.0
#: Members per ``ZADD`` / ``HDEL`` round trip.
ROUND = 1_000


class Demand:
    """This node's advertisements, and (while it leads) the whole cluster's demand."""

    def __init__(self, store: Store, codec: Codec, handler: Handler, election: Election,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.codec = codec
        self.handler = handler
        self.election = election
        self.clock = clock
        #: The cluster's distinct keys at the last advertisement (this node's or a newcomer's).
        self.cluster_keys = 0
        self.stopping = False
        self._demanded: set[Key] = set()
        self._swept: tuple[int, float] | None = None  # term, clock
        self._wanted: set[Key] = set()
        self._wanted_event = asyncio.Event()
        self._wanted_id: bytes | None = None

    # -- every node -----------------------------------------------------------------------

    async def advertise(self) -> None:
        """Refresh this node's keys (once at least, for the count)."""
        names = [key_name(key) for key in self.handler.watched()]
        for start in range(0, max(1, len(names)), ROUND):
            self.cluster_keys = int(await self.store.advertise(
                keys=self.store.keys("demand"),
                args=[int(DEMAND_TTL * 1000), *names[start:start + ROUND]]))

    async def ask(self, keys: list[Key]) -> None:
        """Keys nobody has data for: into the demand now, and onto ``wanted`` for the leader."""
        names = [key_name(key) for key in keys]
        async with self.store.client.pipeline(transaction=False) as pipe:
            await self.store.advertise(keys=self.store.keys("demand"),
                                       args=[int(DEMAND_TTL * 1000), *names], client=pipe)
            pipe.xadd(self.store.names["wanted"], {"keys": "\n".join(names)},
                      maxlen=WANTED_LENGTH, approximate=True)
            self.cluster_keys = int((await pipe.execute())[0])

    # -- the leader -----------------------------------------------------------------------

    async def collect(self) -> set[Key]:
        """Every key watched on any node; drops bad members and unwatched ``latest`` values."""
        names: Any = await self.store.demand(keys=self.store.keys("demand"),
                                             args=[int(DEMAND_TTL * 1000)])
        demand, bad = self._parse(names, "demand member")
        demand |= self.handler.watched()
        if bad:
            await self.store.client.zrem(self.store.names["demand"], *bad)
        gone = self._demanded - demand
        self._demanded = demand
        now = self.clock()
        if (self._swept is None or self._swept[0] != self.election.term
                or now - self._swept[1] >= SWEEP_EVERY):
            await self.sweep(demand)
            self._swept = (self.election.term, now)
        elif gone:  # nobody watches them: a newcomer asks afresh rather than read a stale value
            await self._drop([key_name(key) for key in gone])
        return demand

    async def sweep(self, demand: set[Key]) -> None:
        """Drop every ``latest`` field that is not a demanded key (a predecessor's, or junk)."""
        names: Any = await self.store.client.hkeys(self.store.names["latest"])
        wanted = {key_name(key).encode() for key in demand}
        await self._drop([name for name in names if name not in wanted])

    async def _drop(self, names: list[Any]) -> None:
        for start in range(0, len(names), ROUND):
            await self.store.client.hdel(self.store.names["latest"], *names[start:start + ROUND])

    def _parse(self, names: Any, what: str) -> tuple[set[Key], list[Any]]:
        keys, bad = set(), []
        for name in names or ():
            try:
                keys.add(self.codec.key(name))
            except Untrusted as error:
                self.codec.reject(what, error)
                bad.append(name)
        return keys, bad

    # -- keys new to everyone ---------------------------------------------------------------

    async def wanted(self) -> set[Key]:
        await self._wanted_event.wait()
        return set(self._wanted)

    def wanted_now(self) -> set[Key]:
        self._wanted_event.clear()
        keys, self._wanted = self._wanted, set()
        return keys

    async def listen(self) -> None:
        """Gather the keys new to the cluster that any node asks for (the leader uses them),
        and the word that a leader released the lease."""
        while not self.stopping:
            await guarded(self.store, self._listen_once, 0.5, "reading wanted keys")

    async def _listen_once(self) -> None:
        if self._wanted_id is None:  # from the stream's end: what was asked before is in demand
            self._wanted_id = await self.store.tail(self.store.names["wanted"])
        found = await self.store.read(self.store.names["wanted"], self._wanted_id, 1_000)
        for entry_id, fields in found:
            self._wanted_id = entry_id
            if b"released" in fields:
                self.election.vacant.set()
            elif self.election.token is not None:
                raw = fields.get(b"keys")
                names = raw.split(b"\n") if isinstance(raw, bytes) else [raw]
                self._wanted |= self._parse(names, "wanted entry")[0]
        if self._wanted:
            self._wanted_event.set()
