"""Who may connect: the account gate in front of ``/ws``, and the check that revokes.

A reconnect (a tab shown again, a phone changing networks, every client after a restart) should
cost no database round trip: the look-up was 15 % of the server's samples in a connect/disconnect
flood (py-spy), and an account database under a reconnect storm is the first thing to fall over.
So accounts found active are remembered for a while (:class:`Gate`).

The once-per-tick check (:meth:`Gate.revoked`) asks the database about every account that is
connected or remembered, in batches, and forgets the inactive ones: it reads ``active`` itself,
not when the row was changed, so it holds whoever changed the row, with whatever clock.
Disabling in this process (:meth:`Gate.forget`) takes effect at once; anywhere else (the CLI,
plain SQL, another node), within one tick. Only "active" is remembered; unknown and disabled
ids always ask the database.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from quartsig.domain.expiring import Expiring

#: Seconds an admission is remembered; only a safety net for when the account checks keep failing.
ADMITTED_TTL = 300.0


class Gate:
    """Admits active accounts, remembering them; :meth:`revoked` says whom to close."""

    def __init__(
        self,
        is_active: Callable[[int], Awaitable[bool]],
        inactive_among: Callable[[Iterable[int]], Awaitable[set[int]]],
        disable: Callable[[int], Awaitable[object]] | None = None,
        *,
        ttl: float = ADMITTED_TTL,
        limit: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.is_active = is_active
        self.inactive_among = inactive_among
        self._disable = disable
        self.admitted: Expiring[int, bool] = Expiring(ttl, limit, clock)

    async def admit(self, tg_id: int) -> bool:
        """Whether ``tg_id``'s account is active (raises when the database does)."""
        if tg_id in self.admitted:
            return True
        active = await self.is_active(tg_id)
        if active:
            self.admitted.add(tg_id, True)
        return active

    def forget(self, tg_ids: Iterable[int]) -> None:
        """Stop admitting ``tg_ids`` from memory (an account disabled in this process)."""
        self.admitted.forget(tg_ids)

    async def disable(self, tg_id: int) -> None:
        """Disable the account in the database, and forget it here at once."""
        if self._disable is None:
            raise RuntimeError("this gate was given no way to disable an account")
        await self._disable(tg_id)
        self.forget([tg_id])

    async def revoked(self, connected: Iterable[int]) -> set[int]:
        """Of the ``connected`` accounts and those remembered, the ones no longer active,
        forgotten here at once. Closing twice is harmless; missing one is not."""
        remembered = list(self.admitted.keys())
        inactive = await self.inactive_among({*connected, *remembered})
        self.admitted.forget(inactive)
        return inactive
