"""``create_app()``: settings, state, blueprints and the lifespan in one place.

To add a long-lived piece, append a component to :func:`default_components` (see
:class:`~quartsig.state.Component`); to add routes, append a blueprint to :data:`BLUEPRINTS`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from quart import Blueprint, Quart

from quartsig import hosting
from quartsig.access import accounts, database
from quartsig.access.admission import Gate
from quartsig.access.tokens import TokenAuthority, load_or_create_keys
from quartsig.alerts import webhooks
from quartsig.alerts.announcements import Announcements
from quartsig.alerts.channels import load_channels
from quartsig.cluster import backends
from quartsig.cluster.broker import Broker
from quartsig.cluster.fingerprint import fingerprints
from quartsig.config import ConfigError, Settings
from quartsig.domain.symbols import SCREENERS
from quartsig.feed.budget import RequestBudget
from quartsig.feed.collector import Collector, CollectorSettings
from quartsig.ops import logs
from quartsig.plugins.loader import get_plugin_manager, inventory, load_screeners
from quartsig.state import EXTENSION, Component, State
from quartsig.telegram import webhook
from quartsig.telegram.channel import TelegramChannels
from quartsig.telegram.service import EXTENSION as BOT_EXTENSION
from quartsig.telegram.service import BotService
from quartsig.upstream.scanner import ScannerClient
from quartsig.web import alerts, api, board, stream

log = logging.getLogger(__name__)

#: Seconds the feed's tasks get to end on shutdown before they are left behind.
STOP_TIMEOUT = 10.0

#: The collector's task name under the supervisor (a leader steps down while it keeps failing).
COLLECTOR = "collector"
#: The delivery worker's task name under the supervisor.
DELIVERIES = "deliveries"

MAX_HTTP_BODY = 16 * 1024
"""Bytes an HTTP body may have: the only body we accept is a tiny JSON object."""

BLUEPRINTS: tuple[Blueprint, ...] = (api.blueprint, stream.blueprint, board.blueprint,
                                      alerts.blueprint, webhook.blueprint)



class App(Quart):
    """Quart, except that a configuration error at start-up (a node that does not belong to
    the cluster, say) is not logged as a crash: ``quartsig serve`` says it in one line."""

    def log_exception(
        self,
        exception_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        if not isinstance(exception_info[1], ConfigError):
            super().log_exception(exception_info)

@dataclass
class DatabaseComponent:
    """The Tortoise context, shared with every task of this process while serving."""

    name: str = "database"

    async def start(self, state: State) -> None:
        state.database = await database.init_database(state.settings, share=True)

    async def stop(self, state: State) -> None:
        if state.database is not None:
            await database.close_database(state.database)
            state.database = None


def open_broker(state: State) -> Broker:
    """The broker the URL's scheme names (memory without one), with ``state`` as its handler.
    A Redis node's loops run under the supervisor, and it leads only while its collector can
    run (a node whose collector keeps failing steps down so that another collects)."""
    identity = (fingerprints(load_or_create_keys(state.settings), state.profiles)
                if state.settings.redis_url else None)
    broker = backends.open_broker(state.settings, state, state.vocabulary, metrics=state.metrics,
                                  identity=identity)
    if state.settings.redis_url:
        from quartsig.cluster.redisbroker import RedisBroker

        if isinstance(broker, RedisBroker):
            broker.spawn = state.supervisor.spawn
            broker.election.eligible = lambda: not state.supervisor.is_failing(COLLECTOR)
    return broker


@dataclass
class FeedComponent:
    """Scanner client, broker, collector and the account sweep: the data's whole path."""

    name: str = "feed"
    #: Whether to sweep for disabled accounts (not in ``quartsig collect``: it has no clients).
    accounts: bool = True
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, state: State) -> None:
        settings = state.settings
        scanner_url = settings.scanner_url
        if state.demo:
            from quartsig.demo import serve_standin

            # Its values move once per interval, like a live market.
            state.standin, scanner_url = await serve_standin(step_every=settings.interval)
            log.warning("demo mode: serving data from the built-in stand-in scanner %s",
                        scanner_url)
        state.scanner = ScannerClient(
            scanner_url,
            proxies=settings.proxies,
            concurrency=settings.scanner_concurrency,
            timeout=settings.scanner_timeout,
            min_start_interval=settings.scanner_min_start_interval,
            headers=dict(settings.scanner_headers) or None,
            tor_isolation=settings.tor_isolation,
        )
        await state.scanner.start()
        state.broker = open_broker(state)
        try:
            await state.broker.start()
        except BaseException:  # e.g. not a member of this cluster: leave nothing open
            await self.stop(state)
            raise
        if settings.redis_url and self.accounts:  # per-account limits across the cluster
            from quartsig.cluster.quota import RedisQuota

            state.quota = RedisQuota.from_settings(settings, held=lambda account: (
                state.key_share.held(account, state.hub.subscriptions)))
            await state.quota.start()
        state.collector = Collector(
            state.broker,
            state.profiles,
            state.scanner,
            state.screener_of,
            CollectorSettings(interval=settings.interval, backoff_max=settings.backoff_max,
                              quarantine=settings.plugin_quarantine),
            budget=RequestBudget(settings.early_fetch_budget),
            metrics=state.metrics,
        )
        state.collector.unknown_symbols = state.unknown_symbols  # one cache for both
        state.outbox.start()
        spawn = state.supervisor.spawn
        self.tasks = [spawn(COLLECTOR, state.collector.run), spawn("health", state.watch_health)]
        if state.metrics_dir is not None:  # one of several workers: share the metrics
            self.tasks.append(spawn("metrics", state.share_metrics))
        if self.accounts:  # the clients' side: disabled accounts and expired tokens
            self.tasks.append(spawn("accounts", state.watch_accounts))
            self.tasks.append(spawn("sessions", state.watch_sessions))

    async def stop(self, state: State) -> None:
        state.close_all()
        if state.collector is not None:
            state.collector.stop()  # in case a cancellation is lost inside redis-py
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT)
        self.tasks = []
        if state.broker is not None:
            await state.broker.stop()  # releases a held lease: a successor leads at once
        await state.quota.stop()
        await state.outbox.stop()
        if state.scanner is not None:
            await state.scanner.close()
        if state.standin is not None:
            await state.standin.cleanup()
            state.standin = None


def open_announcements(state: State) -> Announcements | None:
    """The stream that tells every node's deliverer what was written: Redis's consumer group
    in a cluster (:mod:`quartsig.cluster.deliveries`), none alone (the recorder wakes the
    worker of its own process). Wired here because ``alerts`` may not import ``cluster``."""
    settings = state.settings
    if not settings.redis_url:
        return None
    from quartsig.cluster.deliveries import RedisDeliveries, group_for

    node = getattr(state.broker, "node", None)
    return RedisDeliveries.from_url(
        settings.redis_url, settings.redis_prefix,
        consumer=node if isinstance(node, str) else None,
        group=group_for(state.channels),
        idle=settings.alerts_lease,
        on_reject=lambda what: state.metrics.redis_rejected.labels(what=what).inc())


@dataclass
class AlertsComponent:
    """Alert rules, evaluated after each publication of this node's collector (docs/alerts.md).

    It starts after the feed, so the collector exists to be handed the hook, and the broker
    its node id (the delivery stream's consumer name). The recorder's two tasks and the
    delivery worker run under the supervisor: a bug in one of their loops is logged, counted
    and restarted, and health names the task while it keeps failing."""

    name: str = "alerts"
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, state: State) -> None:
        from quartsig.alerts.delivery import Deliverer
        from quartsig.alerts.recorder import Recorder

        settings = state.settings
        announcements = open_announcements(state)
        state.deliverer = Deliverer(state.channels, lease=settings.alerts_lease,
                                    poll=settings.alerts_poll, announcements=announcements)
        state.alerts = Recorder(reload=settings.alerts_reload, on_written=state.deliverer.written,
                                storm=(settings.alerts_storm_count, settings.alerts_storm_window),
                                spawn=state.supervisor.spawn)
        await state.alerts.start()
        if state.collector is not None:
            state.collector.on_published = state.alerts.on_published
            state.collector.standing = state.alerts.standing
        self.tasks = [state.supervisor.spawn(DELIVERIES, state.deliverer.run)]

    async def stop(self, state: State) -> None:
        if state.collector is not None:
            state.collector.on_published = None
            state.collector.standing = None
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT)
        self.tasks = []
        if state.alerts is not None:
            await state.alerts.stop()
        if state.deliverer is not None and state.deliverer.announcements is not None:
            await state.deliverer.announcements.close()
        for channel in state.channels.values():
            close = getattr(channel, "close", None)
            if close is not None:
                await close()


def default_components(settings: Settings | None = None) -> list[Component]:
    """The database, the feed and the alerts; the bot too when ``QUARTSIG_BOT_TOKEN`` is set."""
    bot = [BotService()] if settings is not None and settings.bot_token else []
    return [DatabaseComponent(), FeedComponent(), AlertsComponent(), *bot]


def build_state(
    settings: Settings,
    *,
    demo: bool = False,
    components: Sequence[Component] | None = None,
    log_plugins: bool = True,
) -> State:
    """Load the plugins (a broken one stops start-up here, named), log them, build the state.

    The built-in channels come through the same ``register_channels`` hook as a plugin's:
    webhooks always, Telegram when ``QUARTSIG_BOT_TOKEN`` is set and the app runs the bot
    (the channel sends through the bot that :class:`BotService` makes when it starts)."""
    plugins_dir = settings.plugins_dir if settings.plugins_dir.is_dir() else None
    manager = get_plugin_manager(plugins_dir)
    plugins = inventory(manager)
    components = list(default_components(settings) if components is None else components)
    builtins: list[object] = [webhooks]
    bots = [c for c in components if isinstance(c, BotService)]
    if settings.bot_token and bots:
        builtins.append(TelegramChannels(bots[0], settings))
    if log_plugins:  # a worker's parent has said it: once per process tree
        for info in plugins:  # one line each; `quartsig plugins` lists their columns
            log.info("plugin %s (%s): %s", info.name, info.source, ", ".join(
                f"{profile.name} ({len(profile.columns)} columns)" for profile in info.profiles))
    return State(
        settings=settings,
        tokens=TokenAuthority.from_settings(settings),
        profiles={profile.name: profile for info in plugins for profile in info.profiles},
        screeners=load_screeners(manager, SCREENERS),
        channels=load_channels(manager, builtins),
        gate=Gate(accounts.is_active, accounts.inactive_among, accounts.disable),
        components=components,
        demo=demo,
    )


def create_app(
    settings: Settings | None = None,
    *,
    demo: bool = False,
    components: Sequence[Component] | None = None,
    log_plugins: bool = True,
    **overrides: Any,
) -> Quart:
    """Build the app; ``overrides`` are typed ``Settings`` fields (tests: ``data_dir=tmp``).

    ``demo`` asks for the built-in stand-in scanner instead of TradingView.
    ``components`` replaces :func:`default_components` (tests that need no database).
    """
    if settings is None:
        settings = Settings.from_env(**overrides)
    elif overrides:
        settings = settings.replace(**overrides)
    app = App(__name__)
    hosting.harden(app, settings)  # Hypercorn's gaps closed on every launch path (quartsig.hosting)
    app.config["MAX_CONTENT_LENGTH"] = MAX_HTTP_BODY
    state = build_state(settings, demo=demo, components=components, log_plugins=log_plugins)
    app.extensions[EXTENSION] = state
    for component in state.components:  # the webhook route finds the bot here
        if isinstance(component, BotService):
            app.extensions[BOT_EXTENSION] = component
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.while_serving(state.lifespan)
    logs.install([app.logger])
    return app


def state_of(app: Quart) -> State:
    """The app's state, outside a request (tests, the server's shutdown)."""
    state: State = app.extensions[EXTENSION]
    return state
