"""Connection caps: how many sockets may be open in total, per client address and per account.

Sockets are counted from the handshake, before they authenticate, so a client that opens
sockets and never sends a token fills its own address's budget, not everyone's. The total and
per-address caps are checked before the upgrade (HTTP 503 / 429: a browser sees a failed
connection and backs off); the per-account cap can only be checked once the token names the
account, so over it the socket is closed with 4429 right after authenticating.

Client addresses. The peer address is the client's unless the peer is a trusted proxy
(``QUARTSIG_TRUSTED_PROXIES``); then ``X-Forwarded-For`` is read from the right, skipping
trusted hops, and the first untrusted hop is the client: everything left of it was written by
the client itself and is not believed. A peer that is not a public address (loopback, private,
CGNAT, link-local: where a PaaS router or a local reverse proxy connects from) is not capped
per address, since every user behind it would share one budget; the total and per-account caps
still hold. Behind such a proxy, setting ``QUARTSIG_TRUSTED_PROXIES`` turns the per-address cap
on for the real client addresses.

Everything here is synchronous and runs on the event loop: no locks, no awaits between a check
and the count it guards.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

TOTAL = "total"
ADDRESS = "address"
ACCOUNT = "account"


def parse_networks(value: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks; a bare address is a /32 (or /128)."""
    networks = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(
                "each entry must be an address or a CIDR such as 10.0.0.0/8"
            ) from None
    return tuple(networks)


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:5000"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: Iterable[Network]) -> bool:
    return any(address in network for network in proxies)


@dataclass(frozen=True, slots=True)
class Client:
    """Where a socket comes from; ``capped`` says whether the per-address cap applies."""

    address: str | None
    capped: bool


def client_of(
    peer: str | None, forwarded_for: Iterable[str], proxies: tuple[Network, ...]
) -> Client:
    """The client's address: the peer's, or the right-most untrusted ``X-Forwarded-For`` hop
    when the peer is a trusted proxy (all hops trusted: the left-most)."""
    address = _address(peer)
    if address is None:
        return Client(peer, False)
    if not proxies or not _trusted(address, proxies):
        return Client(str(address), address.is_global)
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        parsed = _address(hop)
        if parsed is None:  # garbage from a trusted proxy: count it under that proxy
            break
        address = parsed
        if not _trusted(parsed, proxies):
            break
    # An address a trusted proxy vouched for is a client's, public or not.
    return Client(str(address), not _trusted(address, proxies) or address.is_global)


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
