"""The ``quartsig`` console script: serve, keys, schema, accounts, tokens.

Exit codes: 0 done; 1 refused (unknown or disabled account); 2 bad
configuration, unreachable database or bad usage. Errors are one line on
stderr without a traceback, and stdout carries only what was asked for, so
``TOKEN=$(quartsig token issue 42)`` is safe in scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from quartsig import __version__, accounts, database, logs
from quartsig.app import create_app, services
from quartsig.config import ConfigError, Settings
from quartsig.deflate import decline_permessage_deflate
from quartsig.plugins import PluginError
from quartsig.tokens import (
    InvalidTelegramId,
    TokenAuthority,
    board_link,
    check_tg_id,
    generate_key,
)

HYPERCORN_CONFIG = "hypercorn.toml"
DEFAULT_BIND = "127.0.0.1:8000"

EXIT_REFUSED = 1
EXIT_CONFIG = 2

T = TypeVar("T")


def _tg_id(text: str) -> int:
    try:
        return check_tg_id(int(text))
    except (ValueError, InvalidTelegramId) as error:
        message = str(error) if isinstance(error, InvalidTelegramId) else "must be an integer"
        raise argparse.ArgumentTypeError(f"invalid Telegram id {text!r}: {message}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quartsig", description="Real-time TradingView signals over WebSocket."
    )
    parser.add_argument("--version", action="version", version=f"quartsig {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server (Hypercorn)")
    serve.add_argument("--demo", action="store_true",
                       help="use the built-in stand-in scanner instead of TradingView")
    serve.add_argument("--bind", metavar="HOST:PORT",
                       help=f"address to listen on (default: $PORT on 0.0.0.0, "
                            f"else {HYPERCORN_CONFIG}, else {DEFAULT_BIND})")
    serve.add_argument("--config", type=Path, default=Path(HYPERCORN_CONFIG),
                       help="Hypercorn TOML config, used when it exists (default: %(default)s)")
    serve.set_defaults(handler=_serve)

    commands.add_parser("keygen", help="print a new Fernet key").set_defaults(handler=_keygen)
    commands.add_parser("migrate", help="create missing tables (safe to repeat)").set_defaults(
        handler=_migrate
    )

    account = commands.add_parser("account", help="manage accounts")
    account_commands = account.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "create an account (idempotent)"),
                         ("disable", "revoke an account's access"),
                         ("enable", "restore an account's access")):
        sub = account_commands.add_parser(action, help=text)
        sub.add_argument("tg_id", type=_tg_id, metavar="ID", help="Telegram id")
        sub.set_defaults(handler=_account)
    account_commands.add_parser("list", help="list accounts").set_defaults(handler=_account)

    token = commands.add_parser("token", help="mint tokens")
    token_commands = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = token_commands.add_parser("issue", help="print a token for an active account")
    issue.add_argument("tg_id", type=_tg_id, metavar="ID", help="Telegram id")
    issue.add_argument("--link", action="store_true",
                       help="print the board link BASE_URL/#token=... instead")
    issue.set_defaults(handler=_token_issue)
    return parser


def _with_database(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        async with database.open_database(settings):
            return await work()

    return asyncio.run(run())


def _keygen(args: argparse.Namespace) -> int:
    print(generate_key())
    return 0


def _migrate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    asyncio.run(database.prepare_schema(settings))
    print(f"schema ready at {database.redact_url(settings.database_url)}", file=sys.stderr)
    return 0


def _account(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.action == "list":
        for account in _with_database(settings, accounts.list_accounts):
            state = "active" if account.active else "disabled"
            print(f"{account.tg_id}\t{state}\t{account.created_at.isoformat()}")
        return 0
    tg_id: int = args.tg_id
    if args.action == "add":
        account, created = _with_database(settings, lambda: accounts.add(tg_id))
        if created:
            print(f"added account {tg_id}", file=sys.stderr)
        elif account.active:
            print(f"account {tg_id} already exists", file=sys.stderr)
        else:
            print(f"account {tg_id} already exists and is disabled; "
                  f"run `quartsig account enable {tg_id}` to restore it", file=sys.stderr)
        return 0
    change = accounts.disable if args.action == "disable" else accounts.enable
    _with_database(settings, lambda: change(tg_id))
    print(f"account {tg_id} {args.action}d", file=sys.stderr)
    return 0


def _token_issue(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.link and not settings.base_url:
        raise ConfigError("QUARTSIG_BASE_URL: must be set to print a link")
    authority = TokenAuthority.from_settings(settings)
    tg_id: int = args.tg_id
    _with_database(settings, lambda: accounts.require_active(tg_id))
    token = authority.issue(tg_id).token
    print(board_link(settings.base_url, token) if settings.base_url and args.link else token)
    return 0


def hypercorn_config(path: Path, bind: str | None, environ: Mapping[str, str]) -> Config:
    """Hypercorn's config from ``path`` (if it exists), then ``$PORT``, then ``--bind``.

    Hypercorn's ``"-"`` log targets are swapped for plain named loggers, so its
    lines go through the root handler (once, redacted) instead of handlers of
    its own that would print errors twice.
    """
    if path.is_file():
        try:
            config = Config.from_toml(path)
        except (OSError, ValueError) as error:  # TOMLDecodeError is a ValueError
            raise ConfigError(f"{path}: {error}") from None
    else:
        config = Config()
        config.bind = [DEFAULT_BIND]
    if config.errorlog == "-":
        config.errorlog = logging.getLogger("hypercorn.error")
    if config.accesslog == "-":
        config.accesslog = logging.getLogger("hypercorn.access")
    port = environ.get("PORT", "").strip()
    if bind:
        config.bind = [bind]
    elif port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("PORT: must be a TCP port number")
        config.bind = [f"0.0.0.0:{port}"]
    return config


def _event_loop_factory(worker_class: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if worker_class != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def apply_stream_settings(config: Config, settings: Settings) -> Config:
    """Hypercorn's side of the stream's limits.

    Hypercorn pings every ``HEARTBEAT_INTERVAL`` but never checks for pongs; a
    read timeout of interval + ``HEARTBEAT_TIMEOUT`` turns those pings into a
    liveness check, since a live peer's pong is read within it and a dead one's
    connection is dropped.
    """
    config.websocket_ping_interval = settings.heartbeat_interval
    config.read_timeout = settings.heartbeat_interval + settings.heartbeat_timeout  # type: ignore[assignment]
    config.websocket_max_message_size = min(
        config.websocket_max_message_size, 4 * settings.max_frame_bytes
    )
    return config


def end_pings_with_their_stream() -> None:
    """Make Hypercorn's websocket ping loop end as soon as its stream closes. Idempotent.

    Hypercorn 0.18's ``WSStream._send_pings`` looks at ``closed`` only after sleeping a
    whole ``websocket_ping_interval``, and the connection's task waits for it: every
    closed websocket lingers up to ``HEARTBEAT_INTERVAL`` (25 s), and a SIGTERM after
    any client closed waited out ``graceful_timeout`` before the process could exit.
    """
    from hypercorn.protocol.ws_stream import WSStream
    from wsproto.events import Ping

    if getattr(WSStream, "_quartsig_pings", False):
        return
    handle = WSStream.handle

    async def _send_pings(self: WSStream) -> None:
        closed = self.__dict__.setdefault("_quartsig_closed", asyncio.Event())
        while not self.closed:
            await self._send_wsproto_event(Ping())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.websocket_ping_interval):
                    await closed.wait()

    async def handle_and_wake(self: WSStream, event: object) -> None:
        await handle(self, event)  # type: ignore[arg-type]
        closed = self.__dict__.get("_quartsig_closed")
        if self.closed and closed is not None:
            closed.set()

    WSStream._send_pings = _send_pings  # type: ignore[method-assign]
    WSStream.handle = handle_and_wake  # type: ignore[method-assign,assignment]
    WSStream._quartsig_pings = True  # type: ignore[attr-defined]


def cap_websocket_messages() -> None:
    """Make Hypercorn drop an oversized client message instead of storing it. Idempotent.

    Hypercorn 0.18's ``WebsocketBuffer.extend`` appends each fragment *before* checking
    ``websocket_max_message_size``, and keeps appending after it has answered 1009, so one
    endless fragmented message grew the server's memory without bound (200 MB sent: RSS
    +230 MB). Checked first, nothing past the limit is ever stored.
    """
    from hypercorn.protocol.ws_stream import FrameTooLargeError, WebsocketBuffer

    if getattr(WebsocketBuffer, "_quartsig_capped", False):
        return
    extend = WebsocketBuffer.extend

    def capped_extend(self: WebsocketBuffer, event: Any) -> None:
        if self.length + len(event.data) > self.max_length:
            raise FrameTooLargeError()
        extend(self, event)

    WebsocketBuffer.extend = capped_extend  # type: ignore[method-assign]
    WebsocketBuffer._quartsig_capped = True  # type: ignore[attr-defined]


async def _serve_until_signalled(app: Quart, config: Config) -> None:
    """Serve until SIGTERM/SIGINT; then close every client with 1001 before Hypercorn stops.

    Hypercorn would otherwise wait out ``graceful_timeout`` for websocket handlers
    that never end on their own, then cut them without a close frame.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        runtime = services(app).runtime
        runtime.close_all()
        async with asyncio.timeout(config.graceful_timeout):
            while runtime.hub.subscriptions:  # noqa: ASYNC110 (shutdown only; a poll is simplest)
                await asyncio.sleep(0.02)

    await serve(app, config, shutdown_trigger=shutdown_trigger)


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    config = apply_stream_settings(
        hypercorn_config(args.config, args.bind, os.environ), settings
    )
    app = create_app(settings, demo=args.demo)
    decline_permessage_deflate()
    end_pings_with_their_stream()
    cap_websocket_messages()
    # Fail before binding, with one clean line, if the database is unreachable.
    asyncio.run(database.prepare_schema(settings))
    with asyncio.Runner(loop_factory=_event_loop_factory(config.worker_class)) as runner:
        runner.run(_serve_until_signalled(app, config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(logging.INFO if args.command == "serve" else logging.WARNING)
    try:
        return int(args.handler(args))
    except (ConfigError, database.DatabaseError, PluginError) as error:
        print(f"quartsig: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except accounts.AccountError as error:
        print(f"quartsig: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
