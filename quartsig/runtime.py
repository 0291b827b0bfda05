"""The objects that live as long as the app: hub, collector, scanner client, plugins.

``create_app`` builds one :class:`Runtime` and ties :meth:`Runtime.start` and
:meth:`Runtime.stop` to the lifespan; routes reach it through
:func:`current_runtime`. Nothing here is a module global, so tests can run
several apps side by side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web
from quart import current_app

from .config import Settings
from .hub import Hub
from .logs import Sparse
from .profiles import Profile
from .protocol import Close, Vocabulary
from .tokens import TokenAuthority

if TYPE_CHECKING:  # imported where used: they import this module for current_runtime()
    from .collector import Collector
    from .connection import Outbox
    from .metrics import Metrics
    from .scanner import ScannerClient

log = logging.getLogger(__name__)

EXTENSION = "quartsig"
ACCOUNT_CLOCK_MARGIN = timedelta(seconds=60)
ADMITTED_TTL = 300.0  # seconds; only a safety net for when the account checks keep failing


class Admitted:
    """Accounts found active in the database recently, so that a reconnect (a tab shown
    again, a phone changing networks, every client after a restart) costs no database
    round trip: the look-up was 15 % of the server's samples in a connect/disconnect
    flood (py-spy), and an account database under a reconnect storm is
    the first thing to fall over.

    Safe because the same once-per-interval check that closes a disabled account's
    connections also forgets it here (:meth:`forget`), and that check looks back over a margin
    (``ACCOUNT_CLOCK_MARGIN``) longer than any look-up: a newcomer admitted from here just
    before its account was disabled is closed by the next check, like a connected one.
    Only "active" is remembered; unknown and disabled ids always ask the database.
    """

    def __init__(self, ttl: float = ADMITTED_TTL, limit: int = 100_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._until: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, tg_id: int) -> bool:
        until = self._until.get(tg_id)
        if until is None:
            return False
        if until < time.monotonic():
            del self._until[tg_id]
            return False
        return True

    def add(self, tg_id: int) -> None:
        self._until.pop(tg_id, None)  # re-inserted last: the oldest entries go first
        if len(self._until) >= self.limit:
            self._until.pop(next(iter(self._until)))
        self._until[tg_id] = time.monotonic() + self.ttl

    def forget(self, tg_ids: Iterable[int]) -> None:
        for tg_id in tg_ids:
            self._until.pop(tg_id, None)


class Expiring:
    """Symbols TradingView said it does not have, remembered for ``ttl`` seconds so that
    a client retrying one gets its error at once instead of costing a request per tick."""

    def __init__(self, ttl: float = 600.0, limit: int = 10_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._items: dict[str, tuple[float, str]] = {}

    def add(self, key: str, value: str) -> None:
        if len(self._items) >= self.limit:
            self._items.pop(next(iter(self._items)))
        self._items[key] = (time.monotonic() + self.ttl, value)

    def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._items[key]
            return None
        return item[1]


@dataclass(eq=False)
class Runtime:
    settings: Settings
    tokens: TokenAuthority
    profiles: dict[str, Profile]
    screeners: dict[str, str]
    account_active: Callable[[int], Awaitable[bool]]
    disabled_since: Callable[[datetime], Awaitable[set[int]]]
    demo: bool = False
    hub: Hub = field(init=False)
    metrics: Metrics = field(init=False)
    vocabulary: Vocabulary = field(init=False)
    unknown_symbols: Expiring = field(default_factory=Expiring)
    admitted: Admitted = field(default_factory=Admitted)
    #: How often failing account look-ups (newcomers) and checks may log a traceback.
    lookup_failures: Sparse = field(default_factory=Sparse)
    check_failures: Sparse = field(default_factory=Sparse)
    outbox: Outbox = field(init=False)
    collector: Collector | None = None
    scanner: ScannerClient | None = None
    standin: web.AppRunner | None = None
    shutting_down: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _accounts_checked: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        from .connection import Outbox
        from .metrics import Metrics

        self.outbox = Outbox()
        self.hub = Hub(max_subscriptions=self.settings.max_subscriptions,
                       retain=max(60.0, 3 * self.settings.interval))
        self.metrics = Metrics()
        self.metrics.watch(
            lambda: len(self.hub.subscriptions),
            lambda: sum(len(keys) for keys in self.hub.subscriptions.values()),
            lambda: len(self.hub.demand()),
        )
        self.vocabulary = Vocabulary(
            profiles=frozenset(self.profiles),
            screeners=self.screeners,
            default_exchange=self.settings.default_exchange,
            default_profile="full" if "full" in self.profiles else min(self.profiles),
        )

    def screener_of(self, symbol: str) -> str:
        from .symbols import screener_for

        return screener_for(symbol, self.screeners)

    async def start(self) -> None:
        from .collector import Collector
        from .scanner import ScannerClient

        scanner_url = self.settings.scanner_url
        if self.demo:
            from .standin import serve_standin

            # Its values move once per interval, like a live market.
            self.standin, scanner_url = await serve_standin(step_every=self.settings.interval)
            log.warning("demo mode: serving data from the built-in stand-in scanner %s",
                        scanner_url)
        self.scanner = ScannerClient(
            scanner_url,
            proxies=self.settings.proxies,
            concurrency=self.settings.scanner_concurrency,
            timeout=self.settings.scanner_timeout,
            min_start_interval=self.settings.scanner_min_start_interval,
            headers=dict(self.settings.scanner_headers) or None,
            tor_isolation=self.settings.tor_isolation,
        )
        await self.scanner.start()
        self.collector = Collector(
            self.hub,
            self.profiles,
            self.scanner,
            self.screener_of,
            interval=self.settings.interval,
            on_unknown=partial(self.unknown_symbols.add, value="TradingView has no such symbol"),
            metrics=self.metrics,
            batch=self.outbox.batch,
        )
        self.outbox.start()
        self._tasks = [
            asyncio.create_task(self.collector.run(), name="quartsig-collector"),
            asyncio.create_task(self._watch_accounts(), name="quartsig-accounts"),
        ]

    def close_all(self, code: int = Close.GOING_AWAY, reason: str = "server shutting down") -> int:
        """Close every connection; from now on a new one is closed as soon as it authenticates
        (clients reconnect at once on 1001, and Hypercorn would wait for them to finish)."""
        self.shutting_down = True
        sinks = list(self.hub.subscriptions)
        for sink in sinks:
            sink.close(code, reason)
        return len(sinks)

    async def stop(self) -> None:
        self.close_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.outbox.stop()
        if self.scanner is not None:
            await self.scanner.close()
        if self.standin is not None:
            await self.standin.cleanup()
            self.standin = None

    async def admit(self, tg_id: int) -> bool:
        """Whether ``tg_id``'s account is active: from :class:`Admitted` when it was found
        active lately, else from the database (raises when the database does)."""
        if tg_id in self.admitted:
            return True
        active = await self.account_active(tg_id)
        if active:
            self.admitted.add(tg_id)
        return active

    async def _watch_accounts(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval)
            try:
                await self.check_accounts()
            except Exception:
                if (held := self.check_failures.due()) is not None:
                    log.warning("account check failed; connections kept (%d more since the "
                                "last report)", held, exc_info=True)

    async def check_accounts(self) -> int:
        """Close the connections of accounts disabled since the last check (once per tick).

        Asks only for accounts changed since the previous check, less a margin for clocks
        of other hosts (the CLI or the bot may disable from elsewhere); closing twice is
        harmless, missing one is not.
        """
        started = datetime.now(UTC)
        since = self._accounts_checked - ACCOUNT_CLOCK_MARGIN
        disabled = await self.disabled_since(since)
        self._accounts_checked = started
        self.admitted.forget(disabled)
        if not disabled:
            return 0
        sinks = self.hub.sinks_of(disabled)
        for sink in sinks:
            sink.close(Close.FORBIDDEN, "account disabled")
        return len(sinks)


def current_runtime() -> Runtime:
    runtime: Runtime = current_app.extensions[EXTENSION].runtime
    return runtime
