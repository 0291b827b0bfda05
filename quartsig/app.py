"""``create_app()``: settings, services, blueprints and the lifespan in one place.

Long-lived pieces are *components* with ``start(app)`` / ``stop(app)``. They
start in list order before the first request and stop in reverse order after
the last, and a failure half-way stops the ones already started, so start-up
never leaves a connection or task behind. To add a piece, append it to
:func:`default_components`; to add routes, append a blueprint to
:data:`BLUEPRINTS`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from quart import Blueprint, Quart
from tortoise.context import TortoiseContext

from quartsig import accounts, api, board, database, logs, metrics, stream
from quartsig.config import Settings
from quartsig.plugins import get_plugin_manager, load_profiles, load_screeners
from quartsig.runtime import Runtime
from quartsig.symbols import SCREENERS
from quartsig.tokens import TokenAuthority

EXTENSION = "quartsig"

MAX_HTTP_BODY = 16 * 1024
"""Bytes an HTTP body may have: the only body we accept is a tiny JSON object."""

BLUEPRINTS: tuple[Blueprint, ...] = (
    api.blueprint,
    stream.blueprint,
    metrics.blueprint,
    board.blueprint,
)


class Component(Protocol):
    """Something with a life tied to the server's (a database, a collector loop)."""

    name: str

    async def start(self, app: Quart) -> None: ...

    async def stop(self, app: Quart) -> None: ...


@dataclass
class Services:
    """What request handlers and components share, stored as ``app.extensions[EXTENSION]``."""

    settings: Settings
    tokens: TokenAuthority
    runtime: Runtime
    demo: bool = False
    database: TortoiseContext | None = None
    components: list[Component] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)


def services(app: Quart) -> Services:
    return app.extensions[EXTENSION]


@dataclass
class DatabaseComponent:
    """The Tortoise context, shared with every task of this process while serving."""

    name: str = "database"

    async def start(self, app: Quart) -> None:
        state = services(app)
        state.database = await database.init_database(state.settings, share=True)

    async def stop(self, app: Quart) -> None:
        state = services(app)
        if state.database is not None:
            await database.close_database(state.database)
            state.database = None


@dataclass
class RuntimeComponent:
    """Hub, scanner client and collector: they start once the database is there."""

    name: str = "runtime"

    async def start(self, app: Quart) -> None:
        await services(app).runtime.start()

    async def stop(self, app: Quart) -> None:
        await services(app).runtime.stop()


def default_components(settings: Settings) -> list[Component]:
    return [DatabaseComponent(), RuntimeComponent()]


def build_runtime(settings: Settings, tokens: TokenAuthority, *, demo: bool = False) -> Runtime:
    """Load the plugins (a broken one stops start-up here, named) and build the runtime."""
    plugins_dir = settings.plugins_dir if settings.plugins_dir.is_dir() else None
    manager = get_plugin_manager(plugins_dir)
    return Runtime(
        settings=settings,
        tokens=tokens,
        profiles=load_profiles(manager),
        screeners=load_screeners(manager, SCREENERS),
        account_active=accounts.is_active,
        disabled_since=accounts.disabled_since,
        demo=demo,
    )


async def _lifespan(app: Quart) -> AsyncGenerator[None, None]:
    started: list[Component] = []
    try:
        for component in services(app).components:
            await component.start(app)
            started.append(component)
        yield
    finally:
        for component in reversed(started):
            try:
                await component.stop(app)
            except Exception:
                app.logger.exception("stopping %s failed", component.name)


def create_app(
    settings: Settings | None = None,
    *,
    demo: bool = False,
    components: Sequence[Component] | None = None,
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
    app.config["MAX_CONTENT_LENGTH"] = MAX_HTTP_BODY
    tokens = TokenAuthority.from_settings(settings)
    app.extensions[EXTENSION] = Services(
        settings=settings,
        tokens=tokens,
        runtime=build_runtime(settings, tokens, demo=demo),
        demo=demo,
        components=list(default_components(settings) if components is None else components),
    )
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.while_serving(lambda: _lifespan(app))
    logs.install([app.logger])
    return app
