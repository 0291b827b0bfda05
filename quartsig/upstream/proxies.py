"""Proxy slots: where each scanner request leaves from, and which ones are resting.

TradingView throttles per source address, so spreading requests over several
SOCKS proxies (or several Tor circuits) multiplies what a tick may ask for.
Each slot owns one long-lived ``aiohttp.ClientSession``: sessions pool
keep-alive connections, and a connector is bound to one proxy.

With Tor, one SocksPort serves many circuits: Tor's ``IsolateSOCKSAuth`` (on
by default) puts streams with different SOCKS credentials on different
circuits, so each slot presents its own random credentials, and a slot that was
throttled or blocked draws fresh ones, which is a new circuit and a new exit.
Changing credentials means a new connector, hence a new session; the old one
is closed once the requests still using it are done.

Proxy URLs may carry credentials. Only :func:`redact`-ed forms are ever shown,
and :meth:`ProxySlot.scrub` removes credentials from text that came back from
libraries (error messages), so they never reach a log or a ``ScanError``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp_socks import ProxyConnector, ProxyType

log = logging.getLogger(__name__)

#: Scheme -> (proxy type, resolve host names at the proxy).
SCHEMES: dict[str, tuple[ProxyType, bool]] = {
    "socks5": (ProxyType.SOCKS5, False),
    "socks5h": (ProxyType.SOCKS5, True),
    "socks4": (ProxyType.SOCKS4, False),
    "socks4a": (ProxyType.SOCKS4, True),
    "http": (ProxyType.HTTP, False),
}

#: Seconds a slot rests after its 1st, 2nd, 3rd+ consecutive failure.
DEFAULT_COOLDOWNS: tuple[float, ...] = (2.0, 10.0, 60.0)

SessionFactory = Callable[[aiohttp.BaseConnector | None], aiohttp.ClientSession]


class ProxyURLError(ValueError):
    """A proxy URL could not be parsed; the message never repeats the URL."""


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """One parsed proxy URL. Credentials are kept out of ``repr``."""

    scheme: str
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def proxy_type(self) -> ProxyType:
        return SCHEMES[self.scheme][0]

    @property
    def rdns(self) -> bool:
        return SCHEMES[self.scheme][1]

    @property
    def label(self) -> str:
        """What logs show: scheme, host and port, never credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_proxy(url: str) -> ProxySpec:
    """``socks5h://user:pass@host:port`` -> :class:`ProxySpec`.

    ``aiohttp_socks.ProxyConnector.from_url`` rejects ``socks5h``; this parser
    accepts it and maps it to SOCKS5 with remote DNS, which is what Tor needs
    (resolving locally would leak the look-up and pick a non-Tor address).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ProxyURLError(f"unsupported proxy scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ProxyURLError(f"a {scheme} proxy URL needs a host and a port")
    return ProxySpec(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def redact(url: str) -> str:
    """The URL without its credentials, for logs: ``socks5://u:p@h:1`` -> ``socks5://h:1``.

    Anything that does not parse is shown as ``<proxy>`` rather than echoed, since
    a malformed URL may still hold a password.
    """
    try:
        return parse_proxy(url).label
    except ProxyURLError:
        return "<proxy>"


def isolation_credentials(index: int) -> tuple[str, str]:
    """Fresh random SOCKS credentials: a new Tor circuit under ``IsolateSOCKSAuth``.

    The slot index keeps the user names of concurrent slots distinct even in
    the (astronomically unlikely) case of a random collision.
    """
    return f"quartsig-{index}-{secrets.token_hex(6)}", secrets.token_hex(12)


def make_connector(
    spec: ProxySpec | None, credentials: tuple[str, str] | None = None
) -> aiohttp.BaseConnector | None:
    """A connector for ``spec`` (``None``: direct, aiohttp's default connector).

    ``credentials`` override the URL's own, for Tor stream isolation.
    """
    if spec is None:
        return None
    username, password = credentials if credentials else (spec.username, spec.password)
    return ProxyConnector(
        proxy_type=spec.proxy_type,
        host=spec.host,
        port=spec.port,
        username=username,
        password=password,
        rdns=spec.rdns,
    )


def cooldown_for(failures: int, cooldowns: Sequence[float], retry_after: float | None) -> float:
    """Seconds to rest after ``failures`` consecutive failures (at least ``retry_after``)."""
    if failures <= 0 or not cooldowns:
        return 0.0
    rest = cooldowns[min(failures, len(cooldowns)) - 1]
    return max(rest, retry_after or 0.0)


@dataclass(eq=False, slots=True)
class _Circuit:
    """One session and how many requests are using it right now."""

    session: aiohttp.ClientSession
    in_flight: int = 0
    retired: bool = False


@dataclass(eq=False, slots=True)
class ProxySlot:
    """One way out: a proxy (or direct), its session, and its health."""

    index: int
    spec: ProxySpec | None
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    circuit: _Circuit | None = field(default=None, repr=False)
    failures: int = 0
    resting_until: float = 0.0
    #: No request may leave this slot before this instant: the upstream said Retry-After.
    held_until: float = 0.0
    renewals: int = 0
    uses: int = 0

    @property
    def label(self) -> str:
        return "direct" if self.spec is None else f"{self.spec.label}#{self.index}"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self.circuit is None:
            raise RuntimeError("the proxy pool is not started")
        return self.circuit.session

    def credential_strings(self) -> tuple[str, ...]:
        """Every credential string this slot has used; :meth:`scrub` removes them."""
        found = [] if self.spec is None else [self.spec.username, self.spec.password]
        if self.credentials:
            found.extend(self.credentials)
        return tuple(sorted({s for s in found if s}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """``text`` with this slot's credentials replaced by ``***``."""
        for secret in self.credential_strings():
            text = text.replace(secret, "***")
        return text


class ProxyPool:
    """The slots, handed out round-robin, skipping those that are resting.

    A failed slot rests for a growing cool-down and is tried again once it is
    over; a success clears its record. When every slot is resting, the one
    that wakes first is used anyway: a tick must never wait on bookkeeping.
    """

    def __init__(
        self,
        urls: Sequence[str],
        session_factory: SessionFactory,
        *,
        tor_isolation: bool = False,
        cooldowns: Sequence[float] = DEFAULT_COOLDOWNS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        specs: list[ProxySpec | None] = [parse_proxy(url) for url in urls] or [None]
        self.slots = [ProxySlot(index, spec) for index, spec in enumerate(specs)]
        self.tor_isolation = tor_isolation and any(spec is not None for spec in specs)
        self._session_factory = session_factory
        self._cooldowns = tuple(cooldowns)
        self._clock = clock
        self._next = 0
        self._circuits: set[_Circuit] = set()

    @property
    def sessions(self) -> list[aiohttp.ClientSession]:
        """Every session currently open, retired ones included."""
        return [circuit.session for circuit in self._circuits if not circuit.session.closed]

    def start(self) -> None:
        for slot in self.slots:
            if slot.circuit is None:
                self._open(slot)

    async def close(self) -> None:
        circuits, self._circuits = self._circuits, set()
        for slot in self.slots:
            slot.circuit = None
        for circuit in circuits:
            await circuit.session.close()

    def choose(self, avoid: ProxySlot | None = None) -> ProxySlot:
        """The next slot that is not resting, preferring one other than ``avoid``."""
        now = self._clock()
        count = len(self.slots)
        order = [self.slots[(self._next + i) % count] for i in range(count)]
        awake = [slot for slot in order if slot.resting_until <= now]
        preferred = [slot for slot in awake if slot is not avoid] or awake
        if preferred:
            slot = preferred[0]
        else:
            others = [slot for slot in order if slot is not avoid] or order
            slot = min(others, key=lambda s: s.resting_until)
        self._next = (slot.index + 1) % count
        slot.uses += 1
        return slot

    def succeeded(self, slot: ProxySlot) -> None:
        if slot.failures:
            log.info("proxy slot %s recovered", slot.label)
        slot.failures = 0
        slot.resting_until = 0.0

    async def failed(
        self, slot: ProxySlot, *, renew: bool = False, retry_after: float | None = None
    ) -> None:
        """Rest ``slot``; with ``renew`` and Tor isolation, give it a new circuit too."""
        slot.failures += 1
        if retry_after:
            slot.held_until = max(slot.held_until, self._clock() + retry_after)
        # A lone slot never rests: there is nowhere else to go, and resting would
        # only add to the retry's own backoff.
        if len(self.slots) > 1:
            rest = cooldown_for(slot.failures, self._cooldowns, retry_after)
            slot.resting_until = self._clock() + rest
            log.warning(
                "proxy slot %s failed (%d in a row); resting %.1fs", slot.label, slot.failures, rest
            )
        if renew and self.tor_isolation and slot.spec is not None:
            await self._renew(slot)

    @asynccontextmanager
    async def lease(self, slot: ProxySlot) -> AsyncIterator[aiohttp.ClientSession]:
        """Use ``slot``'s session; a session retired meanwhile closes after its last user."""
        circuit = slot.circuit
        if circuit is None:
            raise RuntimeError("the proxy pool is not started")
        circuit.in_flight += 1
        try:
            yield circuit.session
        finally:
            circuit.in_flight -= 1
            if circuit.retired and circuit.in_flight == 0:
                self._circuits.discard(circuit)
                await circuit.session.close()

    def _open(self, slot: ProxySlot) -> None:
        if self.tor_isolation and slot.spec is not None:
            slot.credentials = isolation_credentials(slot.index)
        connector = make_connector(slot.spec, slot.credentials)
        circuit = _Circuit(self._session_factory(connector))
        self._circuits.add(circuit)
        slot.circuit = circuit

    async def _renew(self, slot: ProxySlot) -> None:
        old = slot.circuit
        self._open(slot)
        slot.renewals += 1
        log.info("proxy slot %s: new Tor circuit (renewal %d)", slot.label, slot.renewals)
        if old is not None:
            old.retired = True
            if old.in_flight == 0:
                self._circuits.discard(old)
                await old.session.close()
