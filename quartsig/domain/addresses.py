"""Client addresses: who a socket or request comes from, seen through trusted proxies.

The peer address is the client's unless the peer is a trusted proxy
(``QUARTSIG_TRUSTED_PROXIES``); then ``X-Forwarded-For`` is read from the right, skipping
trusted hops, and the first untrusted hop is the client: everything left of it was written by
the client itself and is not believed. A peer that is not a public address (loopback, private,
CGNAT, link-local: where a PaaS router or a local reverse proxy connects from) is not capped
per address, since every user behind it would share one budget.

What is counted per address is the client's *group* (:attr:`Client.group`): an IPv4 address,
or the /64 an IPv6 address is in. A subscriber line gets a whole /64 (often more) and picks its
addresses at will, so counted per /128 one home held 64 sockets per address it cared to use.
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


#: The IPv6 prefix one subscriber line is assumed to hold.
IPV6_GROUP = 64


@dataclass(frozen=True, slots=True)
class Client:
    """Where a socket or request comes from; ``capped`` says whether the per-address cap
    applies; ``group`` is what per-address limits count (the address, or its IPv6 /64)."""

    address: str | None
    capped: bool
    group: str | None = None


def _client(address: Address, capped: bool) -> Client:
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, IPV6_GROUP), strict=False)
        return Client(str(address), capped, str(network))
    return Client(str(address), capped, str(address))


def client_of(
    peer: str | None, forwarded_for: Iterable[str], proxies: tuple[Network, ...]
) -> Client:
    """The client's address: the peer's, or the right-most untrusted ``X-Forwarded-For`` hop
    when the peer is a trusted proxy (all hops trusted: the left-most)."""
    address = _address(peer)
    if address is None:
        return Client(peer, False, peer)
    if not proxies or not _trusted(address, proxies):
        return _client(address, address.is_global)
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        parsed = _address(hop)
        if parsed is None:  # garbage from a trusted proxy: count it under that proxy
            break
        address = parsed
        if not _trusted(parsed, proxies):
            break
    # An address a trusted proxy vouched for is a client's, public or not.
    return _client(address, not _trusted(address, proxies) or address.is_global)
