"""The one state object of an app, and the life it shares with the server.

``create_app`` builds one :class:`State`, stores it as ``app.extensions["quartsig"]`` and ties
:meth:`State.lifespan` to the server's; routes reach it through :func:`current_state`. Nothing
here is a module global, so tests can run several apps side by side.

Long-lived pieces are *components* with ``start(state)`` / ``stop(state)``: they start in list
order before the first request and stop in reverse order after the last, and a failure half-way
stops the ones already started, so start-up never leaves a connection or task behind.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import generate_latest
from quart import current_app

from quartsig import __version__
from quartsig.access.admission import Caps, Gate, KeyQuota
from quartsig.access.expiries import Expiries
from quartsig.access.shares import EarlyShare, KeyShare
from quartsig.access.tokens import TokenAuthority
from quartsig.cluster.broker import Broker
from quartsig.cluster.quota import LocalQuota, Quota
from quartsig.config import UNKNOWN_SYMBOL_TTL
from quartsig.domain.expiring import Expiring
from quartsig.domain.model import Batch
from quartsig.domain.protocol import Close, Vocabulary
from quartsig.domain.symbols import screener_for
from quartsig.fanout.connection import Outbox
from quartsig.fanout.handler import HubAnswers
from quartsig.fanout.hub import Hub, Sink
from quartsig.ops import health, multiprocess
from quartsig.ops.logs import Sparse
from quartsig.ops.metrics import Metrics
from quartsig.ops.supervisor import Supervisor
from quartsig.plugins.profiles import Profile

if TYPE_CHECKING:
    from aiohttp import web
    from tortoise.context import TortoiseContext

    from quartsig.alerts.channels import Channel
    from quartsig.alerts.delivery import Deliverer
    from quartsig.alerts.recorder import Recorder
    from quartsig.config import Settings
    from quartsig.feed.collector import Collector
    from quartsig.upstream.scanner import ScannerClient

log = logging.getLogger(__name__)

EXTENSION = "quartsig"
#: Seconds between two looks for expired tokens: a session outlives its token by at most this.
SESSION_CHECK = 1.0


class Component(Protocol):
    """Something with a life tied to the server's (a database, the collector)."""

    name: str

    async def start(self, state: State) -> None: ...

    async def stop(self, state: State) -> None: ...


@dataclass(eq=False)
class State(HubAnswers):
    """Everything the routes and the background tasks of one app share."""

    settings: Settings
    tokens: TokenAuthority
    profiles: dict[str, Profile]
    screeners: dict[str, str]
    gate: Gate
    components: Sequence[Component] = ()
    demo: bool = False
    hub: Hub = field(init=False)
    caps: Caps = field(init=False)
    #: Each connection's token expiry (the token authority's clock).
    expiries: Expiries[Sink] = field(default_factory=Expiries)
    outbox: Outbox = field(default_factory=Outbox)
    metrics: Metrics = field(default_factory=Metrics)
    vocabulary: Vocabulary = field(init=False)
    unknown_symbols: Expiring[str, str] = field(
        default_factory=lambda: Expiring(UNKNOWN_SYMBOL_TTL)
    )
    #: How often failing account look-ups (newcomers) and checks may log a traceback.
    lookup_failures: Sparse = field(default_factory=Sparse)
    check_failures: Sparse = field(default_factory=Sparse)
    database: TortoiseContext | None = None
    broker: Broker | None = None
    collector: Collector | None = None
    #: Alert rules evaluated after each publication this node makes (``AlertsComponent``).
    alerts: Recorder | None = None
    #: Alert channels by kind (``register_channels``) and this node's delivery worker.
    channels: dict[str, Channel] = field(default_factory=dict)
    deliverer: Deliverer | None = None
    scanner: ScannerClient | None = None
    standin: web.AppRunner | None = None
    shutting_down: bool = False
    started_at: float = field(default_factory=time.monotonic)
    #: Distinct new keys per account per minute (early, then next tick, then refused).
    new_keys: KeyQuota = field(init=False)
    #: Each account's share of early-fetch requests and of the watched keys.
    early_share: EarlyShare = field(init=False)
    key_share: KeyShare[Sink] = field(init=False)
    #: Per-account counts the whole cluster shares (sockets, new keys); local: always yes.
    quota: Quota = field(default_factory=LocalQuota)
    #: Every long-lived task runs under it: ``state.supervisor.spawn(name, factory)``.
    supervisor: Supervisor = field(init=False)
    #: When (monotonic) this node last applied a publication of the collector.
    published_at: float = field(default_factory=time.monotonic)
    #: The upstream status the collector last published, and what this node told its clients
    #: itself (data stale, a task failing) while that status said ``ok``.
    upstream_status: tuple[str, str] = ("ok", "")
    told: tuple[str, str] | None = None
    #: With ``workers`` > 1: the run's directory where each worker writes its metrics, and
    #: this worker's file in it (:mod:`quartsig.ops.multiprocess`).
    metrics_dir: Path | None = None
    metrics_file: Path | None = None

    def __post_init__(self) -> None:
        self.hub = Hub(max_subscriptions=self.settings.max_subscriptions,
                       retain=max(60.0, 3 * self.settings.interval))
        self.new_keys = KeyQuota(self.settings.new_keys_per_minute,
                                 self.settings.early_keys_per_minute)
        self.early_share = EarlyShare(
            self.settings.early_fetches_per_account,
            later=lambda settle: asyncio.get_running_loop().call_soon(settle),
        )
        self.key_share = KeyShare(self.settings.max_keys_per_account)
        self.metrics.watch(
            lambda: len(self.hub.subscriptions),
            lambda: sum(len(keys) for keys in self.hub.subscriptions.values()),
            lambda: len(self.hub.demand()),
        )
        settings = self.settings
        self.caps = Caps(
            total=settings.max_connections,
            per_address=settings.max_connections_per_address,
            per_account=settings.max_connections_per_account,
            pending_share=settings.max_pending_connections,
            on_refused=lambda cap: self.metrics.refused.labels(cap=cap).inc(),
        )
        self.metrics.pending.set_function(lambda: self.caps.pending)
        self.supervisor = Supervisor(
            on_failure=lambda name: self.metrics.task_failures.labels(task=name).inc(),
            on_change=self.review_health,
        )
        self.metrics.tasks_failing.set_function(lambda: len(self.supervisor.failing()))
        self.metrics.data_age.set_function(self.data_age)
        self.metrics.ready.set_function(lambda: float(not self.readiness()))
        self.metrics.build.info({"version": __version__, "python": platform.python_version()})
        self.metrics.upstream_up.set_function(lambda: float(self.upstream_status[0] == "ok"))
        self.metrics.redis_up.set_function(self._redis_up)
        self.metrics.term.set_function(lambda: self.broker.term if self.broker else 0)
        self.vocabulary = Vocabulary(
            profiles=frozenset(self.profiles),
            screeners=self.screeners,
            default_exchange=self.settings.default_exchange,
            default_profile="full" if "full" in self.profiles else min(self.profiles),
        )

    def screener_of(self, symbol: str) -> str:
        return screener_for(symbol, self.screeners)

    def apply(self, batch: Batch) -> int:
        """The one way values enter this node's hub: a tick's batch, from whichever broker.

        Its frames go out together (:class:`~quartsig.fanout.connection.Outbox`), and symbols
        TradingView does not have are remembered so that asking again costs nothing upstream.
        """
        started = time.perf_counter()
        if not self._local_note(batch):
            self.published_at = time.monotonic()
            if batch.status is not None:
                self.upstream_status = batch.status
        for key, _, message in batch.rejected:
            self.unknown_symbols.add(key.symbol, message)
        with self.outbox.batch():
            changed = self.hub.apply(batch)
        self.metrics.fanout.observe(time.perf_counter() - started)
        return changed

    # -- the broker's handler (quartsig.cluster.broker.Handler) ------------------------------

    # -- health (issue #24.2) ------------------------------------------------------------------

    def _redis_up(self) -> float:
        broker = self.broker.health() if self.broker is not None else {}
        return float(broker.get("redis", "ok") == "ok")

    def _local_note(self, batch: Batch) -> bool:
        """Whether ``batch`` is this node's own word (Redis lost) rather than a publication:
        a leader's batches carry its term, or are values or an ``ok`` (an idle tick)."""
        return (bool(self.settings.redis_url) and not batch.term and not batch.values
                and batch.status is not None and batch.status[0] != "ok")

    def data_age(self) -> float:
        """Seconds since the last publication applied here (since start before the first)."""
        return max(0.0, time.monotonic() - self.published_at)

    def readiness(self) -> dict[str, str]:
        """The checks that fail now, each with why: empty when this node serves fresh data.

        The database is not among them: the users a node already serves keep their data
        through its outage (new logins get their documented refusal).
        """
        broker = self.broker.health() if self.broker is not None else {}
        return health.failures(
            redis=str(broker.get("redis", "ok")),
            data_age=self.data_age() if self.collector is not None else 0.0,
            stale_after=health.stale_after(self.settings.interval, self.settings.lease_ttl,
                                           clustered=bool(self.settings.redis_url)),
            failing=self.supervisor.failing(),
        )

    def review_health(self) -> None:
        """Tell clients ``degraded`` while this node's data is stale or a task keeps failing,
        whatever the upstream status says; give them that status back once it is over."""
        trouble = health.degraded_reason(self.readiness())
        if trouble is not None:
            if self.hub.status[0] == "ok" or self.hub.status == self.told:
                self.told = ("degraded", trouble)
                self._tell(self.told)
        elif self.told is not None:
            if self.hub.status == self.told:
                self._tell(self.upstream_status)
            self.told = None

    def _tell(self, status: tuple[str, str]) -> None:
        if self.hub.status != status:
            with self.outbox.batch():
                self.hub.apply(Batch(status=status))

    async def scrape(self) -> bytes:
        """``/metrics``: this process's series, or the whole process tree's with workers."""
        body = generate_latest(self.metrics.registry)  # on the loop: it reads the state
        if self.metrics_dir is None:
            return body
        # Reading and merging the workers' files takes tens of ms: off the loop.
        return await asyncio.to_thread(multiprocess.scrape, body, self.metrics_dir,
                                       self._own_file())

    def _own_file(self) -> Path:
        assert self.metrics_dir is not None
        if self.metrics_file is None:
            self.metrics_file = self.metrics_dir / multiprocess.file_name()
        return self.metrics_file

    async def share_metrics(self) -> None:
        """Keep this worker's file fresh for the worker that is scraped next."""
        try:
            while True:
                body = generate_latest(self.metrics.registry)
                await asyncio.to_thread(multiprocess.write, body, self._own_file())
                await asyncio.sleep(multiprocess.EVERY)
        finally:
            if self.metrics_file is not None:
                self.metrics_file.unlink(missing_ok=True)

    async def watch_health(self) -> None:
        while True:
            await asyncio.sleep(SESSION_CHECK)
            self.review_health()

    async def lifespan(self) -> AsyncGenerator[None, None]:
        started: list[Component] = []
        try:
            for component in self.components:
                await component.start(self)
                started.append(component)
            yield
        finally:
            for component in reversed(started):
                try:
                    await component.stop(self)
                except Exception:
                    log.exception("stopping %s failed", component.name)

    def close_all(self, code: int = Close.GOING_AWAY, reason: str = "server shutting down") -> int:
        """Close every connection; from now on a new one is closed as soon as it authenticates
        (clients reconnect at once on 1001, and Hypercorn would wait for them to finish)."""
        self.shutting_down = True
        sinks = list(self.hub.subscriptions)
        for sink in sinks:
            sink.close(code, reason)
        return len(sinks)

    async def check_accounts(self) -> int:
        """Close the connections of accounts no longer active (once per tick)."""
        disabled = await self.gate.revoked(set(self.hub.users.values()))
        return self._revoke(disabled) if disabled else 0

    async def disable_account(self, tg_id: int) -> int:
        """Disable ``tg_id`` (raises ``accounts.UnknownAccount``) and, in this process, close
        its connections and forget its admission at once; other processes follow within a
        tick. How many connections closed."""
        await self.gate.disable(tg_id)
        return self._revoke({tg_id})

    def _revoke(self, disabled: set[int]) -> int:
        sinks = self.hub.sinks_of(disabled)
        for sink in sinks:
            sink.close(Close.FORBIDDEN, "account disabled")
        self.metrics.revoked.inc(len(sinks))
        return len(sinks)

    def expire_sessions(self) -> int:
        """Close, with 4401, every connection whose token has expired; how many."""
        sinks = self.expiries.due(self.tokens.now())
        for sink in sinks:
            sink.close(Close.BAD_TOKEN, "token expired")
        if sinks:
            self.metrics.expired.inc(len(sinks))
        return len(sinks)

    async def watch_sessions(self) -> None:
        while True:
            await asyncio.sleep(SESSION_CHECK)
            self.expire_sessions()

    async def watch_accounts(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval)
            self.new_keys.prune()
            self.early_share.prune()
            try:
                await self.check_accounts()
            except Exception as error:  # one line, not a driver's traceback every tick
                if (held := self.check_failures.due()) is not None:
                    log.warning("account check failed; connections kept (%s: %s; %d more "
                                "since the last report)", type(error).__name__, error, held)


def current_state() -> State:
    state: State = current_app.extensions[EXTENSION]
    return state
