"""Who may connect: the account gate in front of ``/ws``, and the sweep that revokes.

A reconnect (a tab shown again, a phone changing networks, every client after a restart) should
cost no database round trip: the look-up was 15 % of the server's samples in a connect/disconnect
flood (py-spy), and an account database under a reconnect storm is the first thing to fall over.
So accounts found active are remembered for a while (:class:`Gate`), and the same once-per-tick
check that closes a disabled account's connections forgets it there.

That check looks back over a margin (``CLOCK_MARGIN``) longer than any look-up, so a newcomer
admitted from memory just before its account was disabled is closed by the next check, like a
connected one. Only "active" is remembered; unknown and disabled ids always ask the database.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from .expiring import Expiring

CLOCK_MARGIN = timedelta(seconds=60)
#: Seconds an admission is remembered; only a safety net for when the account checks keep failing.
ADMITTED_TTL = 300.0


class Gate:
    """Admits active accounts, remembering them; :meth:`revoked` says whom to close."""

    def __init__(
        self,
        is_active: Callable[[int], Awaitable[bool]],
        disabled_since: Callable[[datetime], Awaitable[set[int]]],
        *,
        ttl: float = ADMITTED_TTL,
        limit: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.is_active = is_active
        self.disabled_since = disabled_since
        self.admitted: Expiring[int, bool] = Expiring(ttl, limit, clock)
        self.now = now
        self._checked = now()

    async def admit(self, tg_id: int) -> bool:
        """Whether ``tg_id``'s account is active (raises when the database does)."""
        if tg_id in self.admitted:
            return True
        active = await self.is_active(tg_id)
        if active:
            self.admitted.add(tg_id, True)
        return active

    async def revoked(self) -> set[int]:
        """Accounts disabled since the previous call, less a margin for the clocks of other
        hosts (the CLI or the bot may disable from elsewhere), forgotten here at once.
        Closing twice is harmless; missing one is not."""
        started = self.now()
        disabled = await self.disabled_since(self._checked - CLOCK_MARGIN)
        self._checked = started
        self.admitted.forget(disabled)
        return disabled
