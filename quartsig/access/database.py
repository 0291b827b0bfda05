"""Tortoise ORM set-up: one connection, the models, the schema.

Context, not globals. Tortoise 1.x keeps its state in a ``TortoiseContext``
looked up through a context variable. ``init_database`` builds an explicit
context and returns it; nothing here calls ``Tortoise.init``. A Quart server,
though, runs its lifespan, each request and each websocket in different tasks
that do not inherit one another's context variables, so the server passes
``share=True``: Tortoise's one process-wide fallback (the mechanism its own
FastAPI integration uses) then makes the context visible to every task. Only
one shared context may exist per process; the CLI and the tests use
:func:`open_database`, which activates the context only for the caller's task.

Schema. Every start runs ``generate_schemas(safe=True)``: it creates missing
tables and never alters or drops existing ones, so it is safe on every start
and on the Procfile's ``release`` line. When a model first changes shape,
switch to Tortoise 1.x's built-in migrations, which read :data:`TORTOISE_ORM`
from this module::

    TORTOISE_ORM=quartsig.access.database.TORTOISE_ORM python -m tortoise init
    TORTOISE_ORM=quartsig.access.database.TORTOISE_ORM python -m tortoise makemigrations
    TORTOISE_ORM=quartsig.access.database.TORTOISE_ORM python -m tortoise migrate --fake
    # (--fake: existing DBs)
    TORTOISE_ORM=quartsig.access.database.TORTOISE_ORM python -m tortoise migrate

then make ``prepare_schema`` call ``tortoise.migrations.api.migrate`` instead
of ``generate_schemas``. (Aerich, the older tool, is superseded for 1.x.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from tortoise.backends.base.config_generator import expand_db_url
from tortoise.context import TortoiseContext

from quartsig.config import Settings, make_private_dir

MODEL_MODULES = ("quartsig.access.accounts", "quartsig.access.chats", "quartsig.access.invites",
                 "quartsig.alerts.storage")
"""Every module holding Tortoise models; a new models module is added here."""

APP_LABEL = "quartsig"

CONNECT_TIMEOUT = 20.0
"""Seconds start-up waits for the database before giving up with a clear error."""


PING_TIMEOUT = 3.0
"""Seconds a health probe waits: a probe that hangs is worse than one that says no."""


class DatabaseError(RuntimeError):
    """The database cannot be set up or reached; the message names it without a password."""


_QUERY_PASSWORD = re.compile(r"(?i)((?:^|&)password=)[^&]*")


def redact_url(url: str) -> str:
    """``url`` with any password (``user:password@`` or ``?password=``) replaced."""
    parts = urlsplit(url)
    if parts.query:
        parts = parts._replace(query=_QUERY_PASSWORD.sub(r"\1***", parts.query))
    if parts.password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}")
    return urlunsplit(parts)


def _passwords(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [unquote(value) for value in (m.group(0).partition("=")[2] for m in
             _QUERY_PASSWORD.finditer(parts.query)) if value]
    if parts.password:
        found.append(parts.password)
    return found


def sqlite_path(url: str) -> Path | None:
    """The file a ``sqlite://`` URL points at, ``None`` for other URLs and ``:memory:``."""
    if urlsplit(url).scheme != "sqlite":
        return None
    path = expand_db_url(url)["credentials"]["file_path"]
    return None if path == ":memory:" else Path(path)


def connection_name(url: str) -> str:
    """The connection's alias: the SQL dialect, not ``default``.

    Tortoise caches each model's INSERT/DELETE SQL process-wide under (alias,
    schema, table), so two databases of different dialects under one alias
    would share SQLite's ``?`` placeholders with PostgreSQL. One alias per
    dialect keeps a process (a test run) able to use both.
    """
    return "sqlite" if urlsplit(url).scheme == "sqlite" else "postgres"


def tortoise_config(database_url: str) -> dict[str, Any]:
    """The Tortoise config dict for one URL; pure, so the migration CLI can use it too."""
    name = connection_name(database_url)
    return {
        "connections": {name: database_url},
        "apps": {APP_LABEL: {"models": list(MODEL_MODULES), "default_connection": name}},
        "use_tz": True,
        "timezone": "UTC",
    }


def _reason(error: BaseException, url: str) -> str:
    reason = str(error) or error.__class__.__name__
    for password in _passwords(url):
        reason = reason.replace(password, "***")
    return reason


async def init_database(settings: Settings, *, share: bool = True) -> TortoiseContext:
    """Connect, prepare the schema and return the live context.

    Raises :class:`DatabaseError` (never a driver exception) when the database
    cannot be reached, so start-up fails with one line naming the URL.
    """
    url = settings.database_url
    path = sqlite_path(url)
    if path is not None:
        try:
            make_private_dir(path.parent)
        except OSError as error:
            raise DatabaseError(f"cannot create {path.parent} for {url}: {error}") from None
    context = TortoiseContext()
    try:
        with context:  # schema generation resolves connections through the active context
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await context.init(config=tortoise_config(url), _enable_global_fallback=share)
                await context.generate_schemas(safe=True)
    except Exception as error:
        await _close_quietly(context)
        if isinstance(error, TimeoutError):
            error = TimeoutError(f"no answer within {CONNECT_TIMEOUT:g}s")
        raise DatabaseError(
            f"cannot reach the database at {redact_url(url)}: {_reason(error, url)}"
        ) from None
    return context


async def _close_quietly(context: TortoiseContext) -> None:
    with contextlib.suppress(Exception):  # best effort: we are already failing
        await context.close_connections()


async def close_database(context: TortoiseContext) -> None:
    """Close the context's connections and drop it as the shared fallback if it was."""
    await context.close_connections()


async def ping(context: TortoiseContext) -> None:
    """One round trip to the database; raises :class:`DatabaseError` if it fails."""
    try:
        async with asyncio.timeout(PING_TIMEOUT):
            await context.db().execute_query("SELECT 1")
    except Exception as error:
        raise DatabaseError(f"database did not answer: {error.__class__.__name__}") from None


async def prepare_schema(settings: Settings) -> None:
    """Create missing tables and disconnect: the Procfile ``release`` step."""
    context = await init_database(settings, share=False)
    await close_database(context)


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[TortoiseContext]:
    """A database active only in the calling task, closed on exit (CLI, tests)."""
    context = await init_database(settings, share=False)
    try:
        with context:
            yield context
    finally:
        await close_database(context)


def __getattr__(name: str) -> Any:
    # ``TORTOISE_ORM`` is computed on access so importing this module never reads the env.
    if name == "TORTOISE_ORM":
        return tortoise_config(Settings.from_env().database_url)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
