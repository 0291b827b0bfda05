"""Who and what may come in: every admission decision of the server, in one place.

- **Sockets** (:class:`Caps`): how many may be open in total, per client address and per
  account. Sockets are counted from the handshake, before they authenticate, so a client that
  opens sockets and never sends a token fills its own address's budget, not everyone's. The
  total and per-address caps are checked before the upgrade (HTTP 503 / 429: a browser sees a
  failed connection and backs off); the per-account cap can only be checked once the token
  names the account, so over it the socket is closed with 4429 right after authenticating. Who
  the client is (its address, through trusted proxies) is :mod:`quartsig.domain.addresses`'s
  business; a peer that is not public is not capped per address, while the total and
  per-account caps still hold.
- **Accounts** (:class:`Gate`): a reconnect (a tab shown again, a phone changing networks,
  every client after a restart) should cost no database round trip: the look-up was 15 % of the
  server's samples in a connect/disconnect flood (py-spy), and an account database under a
  reconnect storm is the first thing to fall over. So accounts found active are remembered for
  a while. The once-per-tick check (:meth:`Gate.revoked`) asks the database about every account
  that is connected or remembered, in batches, and forgets the inactive ones: it reads
  ``active`` itself, not when the row was changed, so it holds whoever changed the row, with
  whatever clock. Disabling in this process (:meth:`Gate.forget`) takes effect at once;
  anywhere else (the CLI, plain SQL, another node), within one tick. Only "active" is
  remembered; unknown and disabled ids always ask the database.
- **New keys** (:func:`admit_new_key`, :class:`KeyQuota`): a key nobody has data for costs an
  upstream request. It counts against the cap of distinct keys (this node's, and the cluster's
  as last counted) and the account's quota of new keys a minute. A made-up ticker is a new key
  every time, so this is what stops one account from turning subscriptions into requests.

Everything here is synchronous (but :class:`Gate`'s database calls) and runs on the event loop:
no locks, no awaits between a check and the count it guards. Clocks are injected.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from quartsig.domain.addresses import Client
from quartsig.domain.expiring import Expiring
from quartsig.domain.protocol import ErrorCode, ProtocolError

# -- sockets ---------------------------------------------------------------------------------

TOTAL = "total"
PENDING = "pending"
ADDRESS = "address"
ACCOUNT = "account"


class Refused(Exception):
    """Over a cap: ``cap`` names which (``total``, ``pending``, ``address``, ``account``)."""

    def __init__(self, cap: str, message: str, status: int) -> None:
        super().__init__(message)
        self.cap = cap
        self.message = message
        self.status = status


@dataclass(eq=False, slots=True)
class Ticket:
    """One socket's place in the counts, from the handshake to :meth:`release`."""

    caps: Caps
    address: str | None
    account: int | None = None
    released: bool = False

    def authenticated(self, tg_id: int) -> None:
        """Count the socket under ``tg_id``; raises :class:`Refused` over the account cap."""
        self.caps._join(self, tg_id)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.caps._leave(self)


@dataclass(eq=False)
class Caps:
    """The counts, and the caps (0 turns one off). ``pending_share``: how many of the ``total``
    sockets not yet authenticated may hold, so that sockets that never authenticate (from
    however many addresses) cannot take the room of those that did."""

    total: int
    per_address: int
    per_account: int
    pending_share: int = 0
    on_refused: Callable[[str], None] = lambda cap: None
    open: int = 0
    pending: int = 0
    addresses: dict[str, int] = field(default_factory=dict)
    accounts: dict[int, int] = field(default_factory=dict)

    def enter(self, client: Client) -> Ticket:
        """Count a new socket; raises :class:`Refused` (with an HTTP status) over a cap."""
        if self.total and self.open >= self.total:
            self._refuse(TOTAL, "server full", 503)
        if self.pending_share and self.pending >= self.pending_share:
            self._refuse(PENDING, "too many connections waiting to authenticate", 503)
        address = client.group if client.capped and self.per_address else None
        if address is not None and self.addresses.get(address, 0) >= self.per_address:
            self._refuse(ADDRESS, "too many connections from this address", 429)
        self.open += 1
        self.pending += 1
        if address is not None:
            self.addresses[address] = self.addresses.get(address, 0) + 1
        return Ticket(self, address)

    def _join(self, ticket: Ticket, tg_id: int) -> None:
        if ticket.released or ticket.account is not None:
            return
        if self.per_account and self.accounts.get(tg_id, 0) >= self.per_account:
            self._refuse(ACCOUNT, "too many connections for this account", 4429)
        self.pending -= 1
        ticket.account = tg_id
        self.accounts[tg_id] = self.accounts.get(tg_id, 0) + 1

    def _leave(self, ticket: Ticket) -> None:
        self.open -= 1
        if ticket.account is None:
            self.pending -= 1
        else:
            _decrement(self.accounts, ticket.account)
        if ticket.address is not None:
            _decrement(self.addresses, ticket.address)

    def _refuse(self, cap: str, message: str, status: int) -> None:
        self.on_refused(cap)
        raise Refused(cap, message, status)


def _decrement(counts: dict[Any, int], key: Any) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


# -- new keys --------------------------------------------------------------------------------


class KeyQuota:
    """Distinct new keys per account per ``window`` seconds, in two tiers.

    The first ``early`` keys of a window are fetched early; the next ones, up to ``limit``, are
    accepted but wait for the next full tick (which fetches the whole demand in a few grouped
    requests, so they cost next to nothing upstream); beyond ``limit`` they are refused. Asking
    for a key again within the window gets the same answer and counts once.
    """

    EARLY = "early"
    TICK = "tick"
    REFUSE = "refuse"

    __slots__ = ("_seen", "clock", "early", "limit", "window")

    def __init__(
        self,
        limit: int,
        early: int | None = None,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.early = limit if early is None else min(early, limit)
        self.window = window
        self.clock = clock
        #: account -> key -> (when it was first asked for in this window, its verdict)
        self._seen: dict[Hashable, dict[Hashable, tuple[float, str]]] = {}

    def admit(self, account: Hashable, key: Hashable) -> str:
        """:attr:`EARLY`, :attr:`TICK` or :attr:`REFUSE` for ``account`` asking for ``key``."""
        now = self.clock()
        cutoff = now - self.window
        seen = self._seen.get(account)
        if seen is None:
            seen = self._seen[account] = {}
        else:
            known = seen.get(key)
            if known is not None and known[0] > cutoff:
                return known[1]
            if len(seen) >= self.early:
                for old in [k for k, (at, _) in seen.items() if at <= cutoff]:
                    del seen[old]
        counted = sum(1 for _, verdict in seen.values() if verdict != self.REFUSE)
        if counted < self.early:
            verdict = self.EARLY
        elif counted < self.limit:
            verdict = self.TICK
        else:
            return self.REFUSE
        seen[key] = (now, verdict)
        return verdict

    def prune(self) -> None:
        """Forget windows that have passed (accounts that stopped asking)."""
        cutoff = self.clock() - self.window
        for account in list(self._seen):
            seen = self._seen[account]
            for old in [k for k, (at, _) in seen.items() if at <= cutoff]:
                del seen[old]
            if not seen:
                del self._seen[account]

    def __len__(self) -> int:
        return len(self._seen)


def admit_new_key(quota: KeyQuota, account: Hashable, key: Hashable, *, free: bool,
                  watched: bool, held: int, count_watched: Callable[[], int], max_keys: int,
                  cluster_keys: int, id: Any = None) -> str:
    """:attr:`KeyQuota.EARLY` (fetch it now) or :attr:`KeyQuota.TICK` (the next full tick
    fetches it); raises :class:`ProtocolError` (``key_limit``, ``quota_exceeded``) beyond.

    ``free``: the key costs nothing (it has data, or this connection holds it already);
    ``watched``: someone on this node subscribes to it. Neither meets the key cap. A new key
    meets it when the cluster holds ``max_keys`` already, or this node does: ``held`` keys
    (cached ones included) and, counted only then (``count_watched`` walks every key), as
    many watched ones, since cached keys are dropped first.
    """
    if free:
        return KeyQuota.EARLY
    if not watched and (cluster_keys >= max_keys
                        or (held >= max_keys and count_watched() >= max_keys)):
        raise ProtocolError(ErrorCode.KEY_LIMIT, f"this server watches {max_keys} keys already",
                            id)
    verdict = quota.admit(account, key)
    if verdict == KeyQuota.REFUSE:
        raise ProtocolError(ErrorCode.QUOTA_EXCEEDED,
                            f"at most {quota.limit} new keys a minute per account", id)
    return verdict


# -- accounts --------------------------------------------------------------------------------

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
