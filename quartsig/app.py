"""``create_app()``: settings, state, blueprints and the lifespan in one place.

To add a long-lived piece, append a component to :func:`default_components` (see
:class:`~quartsig.state.Component`); to add routes, append a blueprint to :data:`BLUEPRINTS`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quart import Blueprint, Quart

from quartsig import hosting
from quartsig.access import accounts, database
from quartsig.access.admission import Gate
from quartsig.access.tokens import TokenAuthority
from quartsig.cluster.broker import Broker
from quartsig.cluster.memory import MemoryBroker
from quartsig.config import Settings
from quartsig.domain.symbols import SCREENERS
from quartsig.feed.budget import RequestBudget
from quartsig.feed.collector import Collector
from quartsig.ops import logs
from quartsig.plugins.loader import get_plugin_manager, inventory, load_screeners
from quartsig.state import EXTENSION, Component, State
from quartsig.upstream.scanner import ScannerClient
from quartsig.web import api, board, stream

log = logging.getLogger(__name__)

#: Seconds the feed's tasks get to end on shutdown before they are left behind.
STOP_TIMEOUT = 10.0

#: The collector's task name under the supervisor (a leader steps down while it keeps failing).
COLLECTOR = "collector"

MAX_HTTP_BODY = 16 * 1024
"""Bytes an HTTP body may have: the only body we accept is a tiny JSON object."""

BLUEPRINTS: tuple[Blueprint, ...] = (api.blueprint, stream.blueprint, board.blueprint)


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
    """Redis when ``QUARTSIG_REDIS_URL`` (or the platform's ``REDIS_URL``) is set, else memory."""
    if state.settings.redis_url:
        from quartsig.cluster.redis import RedisBroker

        broker = RedisBroker.from_settings(state.settings, state.hub, state.apply, state.metrics)
        broker.spawn = state.supervisor.spawn  # its loops run supervised (issue #20.1)
        # A node whose collector keeps failing must not hold the lease: another may collect.
        broker.eligible = lambda: not state.supervisor.is_failing(COLLECTOR)
        return broker
    return MemoryBroker(state.hub, state.apply)


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
        await state.broker.start()
        state.collector = Collector(
            state.broker,
            state.profiles,
            state.scanner,
            state.screener_of,
            interval=settings.interval,
            budget=RequestBudget(settings.early_fetch_budget),
            backoff_max=settings.backoff_max,
            metrics=state.metrics,
            quarantine=settings.plugin_quarantine,
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
        await state.outbox.stop()
        if state.scanner is not None:
            await state.scanner.close()
        if state.standin is not None:
            await state.standin.cleanup()
            state.standin = None


def default_components() -> list[Component]:
    return [DatabaseComponent(), FeedComponent()]


def build_state(
    settings: Settings,
    *,
    demo: bool = False,
    components: Sequence[Component] | None = None,
    log_plugins: bool = True,
) -> State:
    """Load the plugins (a broken one stops start-up here, named), log them, build the state."""
    plugins_dir = settings.plugins_dir if settings.plugins_dir.is_dir() else None
    manager = get_plugin_manager(plugins_dir)
    plugins = inventory(manager)
    if log_plugins:  # a worker's parent has said it: once per process tree
        for info in plugins:  # one line each; `quartsig plugins` lists their columns
            log.info("plugin %s (%s): %s", info.name, info.source, ", ".join(
                f"{profile.name} ({len(profile.columns)} columns)" for profile in info.profiles))
    return State(
        settings=settings,
        tokens=TokenAuthority.from_settings(settings),
        profiles={profile.name: profile for info in plugins for profile in info.profiles},
        screeners=load_screeners(manager, SCREENERS),
        gate=Gate(accounts.is_active, accounts.inactive_among, accounts.disable),
        components=list(default_components() if components is None else components),
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
    app = Quart(__name__)
    hosting.harden(app, settings)  # Hypercorn's gaps closed on every launch path (quartsig.hosting)
    app.config["MAX_CONTENT_LENGTH"] = MAX_HTTP_BODY
    state = build_state(settings, demo=demo, components=components, log_plugins=log_plugins)
    app.extensions[EXTENSION] = state
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.while_serving(state.lifespan)
    logs.install([app.logger])
    return app


def state_of(app: Quart) -> State:
    """The app's state, outside a request (tests, the server's shutdown)."""
    state: State = app.extensions[EXTENSION]
    return state
