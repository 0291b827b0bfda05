"""Connection caps: how many sockets may be open in total, per client address and per account.

Sockets are counted from the handshake, before they authenticate, so a client that opens
sockets and never sends a token fills its own address's budget, not everyone's. The total and
per-address caps are checked before the upgrade (HTTP 503 / 429: a browser sees a failed
connection and backs off); the per-account cap can only be checked once the token names the
account, so over it the socket is closed with 4429 right after authenticating.

Who the client is (its address, through trusted proxies) is
:mod:`quartsig.domain.addresses`'s business; a peer that is not public is not capped per
address, while the total and per-account caps still hold.

Everything here is synchronous and runs on the event loop: no locks, no awaits between a check
and the count it guards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quartsig.domain.addresses import Client

TOTAL = "total"
ADDRESS = "address"
ACCOUNT = "account"


class Refused(Exception):
    """Over a cap: ``cap`` names which (``total``, ``address``, ``account``)."""

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
    """The counts, and the three caps (0 turns one off)."""

    total: int
    per_address: int
    per_account: int
    on_refused: Callable[[str], None] = lambda cap: None
    open: int = 0
    pending: int = 0
    addresses: dict[str, int] = field(default_factory=dict)
    accounts: dict[int, int] = field(default_factory=dict)

    def enter(self, client: Client) -> Ticket:
        """Count a new socket; raises :class:`Refused` (with an HTTP status) over a cap."""
        if self.total and self.open >= self.total:
            self._refuse(TOTAL, "server full", 503)
        address = client.address if client.capped and self.per_address else None
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
