"""Client addresses: who a socket or request comes from, seen through trusted proxies.

The peer address is the client's unless the peer is a trusted proxy
(``QUARTSIG_TRUSTED_PROXIES``); then ``X-Forwarded-For`` is read from the right, skipping
trusted hops, and the first untrusted hop is the client: everything left of it was written by
the client itself and is not believed. A peer that is not a public address (loopback, private,
CGNAT, link-local: where a PaaS router or a local reverse proxy connects from) is not capped
per address, since every user behind it would share one budget.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

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
