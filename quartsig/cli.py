"""The ``quartsig`` console script: serve, plugins, keys, schema, accounts, tokens.

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
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from quartsig import __version__, server
from quartsig.access import accounts, database
from quartsig.access.tokens import (
    InvalidTelegramId,
    TokenAuthority,
    board_link,
    check_tg_id,
    generate_key,
)
from quartsig.app import AlertsComponent, DatabaseComponent, FeedComponent, build_state, create_app
from quartsig.config import ConfigError, Settings
from quartsig.ops import logs
from quartsig.plugins.loader import PluginError, describe, get_plugin_manager, inventory
from quartsig.state import Component

HYPERCORN_CONFIG = "hypercorn.toml"

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
    serve.add_argument("--bot", action="store_true",
                       help="with --demo: a demo Telegram bot too, on a built-in Telegram "
                            "stand-in, and a chat page to be its user (docs/bot.md)")
    serve.add_argument("--bind", metavar="HOST:PORT",
                       help=f"address to listen on (default: $PORT on 0.0.0.0, "
                            f"else {HYPERCORN_CONFIG}, else {server.DEFAULT_BIND})")
    serve.add_argument("--config", type=Path, default=None,
                       help=f"Hypercorn TOML config (default: ./{HYPERCORN_CONFIG} when it "
                            "exists; a given path must exist)")
    serve.set_defaults(handler=_serve)

    collect = commands.add_parser(
        "collect", help="run only the collector, serving no sockets (needs QUARTSIG_REDIS_URL)")
    collect.add_argument("--demo", action="store_true",
                         help="poll the built-in stand-in scanner instead of TradingView")
    collect.set_defaults(handler=_collect)

    commands.add_parser(
        "plugins", help="list loaded plugins, their profiles, columns and sources"
    ).set_defaults(handler=_plugins)
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
    _add_bot_commands(commands)
    return parser


# -- the Telegram bot (quartsig.telegram; docs/bot.md) --------------------------------------

DEMO_TG_ID = 1
"""The account ``serve --demo`` prints a board link for."""


def _add_bot_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bot = commands.add_parser("bot", help="the Telegram bot (QUARTSIG_BOT_TOKEN; docs/bot.md)")
    bot_commands = bot.add_subparsers(dest="action", required=True, metavar="ACTION")
    webhook = bot_commands.add_parser(
        "webhook", help="register (set), show (info) or remove (delete) the bot's webhook")
    webhook.add_argument("operation", choices=("set", "info", "delete"))
    webhook.set_defaults(handler=_bot_webhook)
    bot_commands.add_parser(
        "poll", help="take updates by long polling (no public URL); one poller per bot"
    ).set_defaults(handler=_bot_poll)
    invite = commands.add_parser(
        "invite", help="mint one-time invite links (QUARTSIG_SIGNUP=invite)")
    invite.add_argument("--count", type=int, default=1, help="how many (default: 1)")
    invite.set_defaults(handler=_invite)


def _bot_settings() -> tuple[Settings, str]:
    settings = Settings.from_env()
    if not settings.bot_token:
        raise ConfigError("QUARTSIG_BOT_TOKEN: must be set (the token @BotFather gave)")
    return settings, settings.bot_token


def _telegram(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; any Telegram or network failure becomes one line (exit 2)."""
    from quartsig.telegram.client import plainly

    async def run() -> T:
        return await plainly(work())

    return asyncio.run(run())


def _bot_webhook(args: argparse.Namespace) -> int:
    from quartsig.telegram.client import make_bot

    settings, token = _bot_settings()
    if args.operation == "set" and not settings.base_url:
        raise ConfigError("QUARTSIG_BASE_URL: must be set to the public https:// URL Telegram "
                          "will call (or use `quartsig bot poll`)")

    async def work() -> str:
        bot = make_bot(token, settings.bot_api_url)
        try:
            if args.operation == "set":
                assert settings.base_url is not None
                await _set_webhook(bot, settings.base_url, token)
                return f"webhook set: {settings.base_url}/telegram/..."
            if args.operation == "delete":
                await bot.delete_webhook()
                return "webhook deleted"
            info = await bot.get_webhook_info()
            error = f"\tlast error: {info.last_error_message}" if info.last_error_message else ""
            shown = info.url.split("/telegram/")[0] + "/telegram/..." if info.url else "(none)"
            return f"url: {shown}\tpending: {info.pending_update_count}{error}"
        finally:
            await bot.session.close()

    print(_telegram(work))
    return 0


async def _set_webhook(bot: Any, base_url: str, token: str) -> None:
    """Register the webhook at ``base_url`` (path and secret derived from ``token``)."""
    from quartsig.telegram.client import webhook_secret, webhook_url

    await bot.set_webhook(webhook_url(base_url, token), secret_token=webhook_secret(token),
                          allowed_updates=["message", "callback_query"])


def _bot_poll(args: argparse.Namespace) -> int:
    import signal

    from quartsig.app import DatabaseComponent
    from quartsig.telegram import polling
    from quartsig.telegram.service import BotService

    settings, _ = _bot_settings()
    service = BotService(fallback_url=_local_url())
    state = build_state(settings, components=[DatabaseComponent(), service])

    async def work() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await polling.run(state, service, stop)

    _telegram(work)
    return 0


def _invite(args: argparse.Namespace) -> int:
    from quartsig.access import invites

    settings = Settings.from_env()
    if not 1 <= args.count <= 1000:
        raise ConfigError("--count: must be from 1 to 1000")
    codes = _with_database(settings, lambda: _mint(invites.mint, args.count))
    username = None
    if settings.bot_token:
        from quartsig.telegram.client import BotIdentity, make_bot

        async def name() -> str:
            bot = make_bot(settings.bot_token or "", settings.bot_api_url)
            try:
                return await BotIdentity(bot).username()
            finally:
                await bot.session.close()

        username = _telegram(name)
    for code in codes:
        print(f"https://t.me/{username}?start={code}" if username else code)
    return 0


async def _mint(mint: Callable[[], Awaitable[str]], count: int) -> list[str]:
    return [await mint() for _ in range(count)]


def _local_url(config_path: Path = Path(HYPERCORN_CONFIG)) -> str | None:
    """Where ``quartsig serve`` listens (``--bind``, ``$PORT``, hypercorn.toml, the default),
    as a URL this machine can open: the link base when ``QUARTSIG_BASE_URL`` is unset."""
    try:
        bind = server.hypercorn_config(config_path, None, os.environ).bind[0]
    except (ConfigError, IndexError):
        return None
    return _url_of_bind(bind)


def _url_of_bind(bind: str) -> str | None:
    if bind.startswith(("unix:", "fd://")):
        return None
    host, _, port = bind.rpartition(":")
    if host in {"0.0.0.0", "[::]", "::", ""}:
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _with_database(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        async with database.open_database(settings):
            return await work()

    return asyncio.run(run())


def _plugins(args: argparse.Namespace) -> int:
    """What ``serve`` would load, with the same checks (a broken plugin: one line, exit 2)."""
    settings = Settings.from_env()
    plugins_dir = settings.plugins_dir if settings.plugins_dir.is_dir() else None
    for line in describe(inventory(get_plugin_manager(plugins_dir))):
        print(line)
    return 0


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
    base_url = settings.base_url or (_local_url() if args.link else None)
    if args.link and not base_url:
        raise ConfigError("QUARTSIG_BASE_URL: must be set to print a link")
    authority = TokenAuthority.from_settings(settings)
    tg_id: int = args.tg_id
    _with_database(settings, lambda: accounts.require_active(tg_id))
    token = authority.issue(tg_id).token
    print(board_link(base_url, token) if base_url and args.link else token)
    return 0


def _hypercorn_path(given: Path | None) -> Path:
    """``--config`` as given (it must exist: a typo must not be ignored), else the default."""
    if given is not None and not given.is_file():
        raise ConfigError(f"--config {given}: no such file")
    return (given or Path(HYPERCORN_CONFIG)).absolute()


def _check_redis(settings: Settings) -> None:
    """Stop with one line when Redis can never work as configured (an outage is waited out)."""
    if settings.redis_url:
        from quartsig.cluster.probe import misconfiguration

        if (problem := asyncio.run(misconfiguration(settings.redis_url))) is not None:
            raise ConfigError(f"QUARTSIG_REDIS_URL: {problem}")


def _startup_line(settings: Settings, role: str, **where: str) -> str:
    """What this process is and uses, every path absolute and every password masked."""
    plugins = settings.plugins_dir.absolute()
    parts = [f"quartsig {__version__} starting as {role}", *(f"{k} {v}" for k, v in where.items()),
             f"database {database.redact_url(settings.database_url)}",
             f"Redis {database.redact_url(settings.redis_url) if settings.redis_url else 'none'}",
             f"data dir {settings.data_dir.absolute()}",
             f"plugins dir {plugins if plugins.is_dir() else 'none'}"]
    return "; ".join(parts)


def _serve(args: argparse.Namespace) -> int:
    if args.bot and not args.demo:
        raise ConfigError("--bot: only with --demo (a real bot needs QUARTSIG_BOT_TOKEN; "
                          "see docs/bot.md)")
    with contextlib.ExitStack() as demo_telegram:
        return _serve_with(args, demo_telegram)


def _serve_with(args: argparse.Namespace, demo_telegram: contextlib.ExitStack) -> int:
    settings = Settings.from_env()
    logs.setup(settings.log_format, settings.log_probes)
    path = _hypercorn_path(args.config)
    config = server.apply_stream_settings(
        server.hypercorn_config(path, args.bind, os.environ), settings
    )
    if config.workers > 1 and args.bot:
        raise ConfigError(f"--bot: runs one process, and {path} asks for workers = "
                          f"{config.workers}")
    if config.workers > 1 and not settings.redis_url:
        raise ConfigError(
            f"{path}: workers = {config.workers} needs QUARTSIG_REDIS_URL (each worker "
            "would otherwise poll TradingView on its own); see docs/cluster.md")
    _check_redis(settings)
    telegram = demo_telegram.enter_context(_demo_telegram(settings)) if args.bot else None
    if telegram is not None:
        settings = _demo_bot_settings(settings, telegram)
    app = create_app(settings, demo=args.demo)  # a broken plugin fails here, before forking
    # Fail before binding, with one clean line, if the database is unreachable.
    asyncio.run(database.prepare_schema(settings))
    log = logging.getLogger("quartsig")
    log.info("%s", _startup_line(
        settings, "a cluster node" if settings.redis_url else "a standalone server",
        bind=", ".join(config.bind), workers=str(config.workers),
        config=str(path) if path.is_file() else "none (Hypercorn defaults)"))
    # Listen first: a link printed by a server that then cannot listen would lead nowhere.
    sockets = server.listen(config) if config.workers == 1 else None
    _introduce_demo(app, settings, args.demo, config.bind[0] if config.bind else "", telegram)
    if config.workers > 1:
        code = server.run_workers(server.WorkerSpec(args.demo, args.bind, path), config.workers)
    else:
        code = 0
        server.run(app, config, sockets)
    log.info("quartsig stopped")
    return code


def _introduce_demo(app: Any, settings: Settings, demo: bool, bind: str,
                    telegram: Any = None) -> None:
    """Without ``QUARTSIG_BASE_URL``, links point where this server listens; with ``--demo``,
    print a ready board link for a demo account at start; with ``--bot`` too, register the
    demo bot's webhook here and print the chat page's link next to it."""
    from quartsig.telegram.service import EXTENSION as BOT

    local = settings.base_url or _url_of_bind(bind)
    if BOT in app.extensions:
        app.extensions[BOT].fallback_url = local
    if demo and local:
        _with_database(settings, lambda: accounts.add(DEMO_TG_ID))
        token = TokenAuthority.from_settings(settings).issue(DEMO_TG_ID).token
        print(f"demo board (account {DEMO_TG_ID}): {board_link(local, token)}", flush=True)
    if telegram is not None:
        from quartsig.demo.telegramchat import CHAT_USER, chat_url

        listening = _url_of_bind(bind)  # the stand-in is on this machine: no public URL
        if not listening:
            raise ConfigError(f"--bot: the demo bot's webhook needs a TCP address, not {bind}")
        _register_demo_webhook(settings, listening)
        if BOT in app.extensions:  # the board's "Get a new link from @<bot>" leads here
            app.extensions[BOT].chat_url = chat_url(telegram.url)
        print(f"demo Telegram chat (user {CHAT_USER}): {chat_url(telegram.url)}", flush=True)


# -- serve --demo --bot: the bot on a Telegram stand-in, in this process --------------------


def _demo_telegram(settings: Settings) -> contextlib.AbstractContextManager[Any]:
    """The Telegram Bot API stand-in with the chat page, serving in a thread of its own (its
    loop is not the server's: a slow page never holds a web request, and the other way
    round) until ``serve`` returns."""
    from quartsig.demo.telegram import TelegramStandin
    from quartsig.demo.telegramchat import DEMO_BOT, install

    log = logging.getLogger("quartsig")
    if settings.bot_token or settings.bot_api_url:
        log.warning("demo bot: QUARTSIG_BOT_TOKEN and QUARTSIG_BOT_API_URL are not used with "
                    "--bot (the demo bot has its own token, on the stand-in)")
    return TelegramStandin.running(token=DEMO_TOKEN, bot=dict(DEMO_BOT), extensions=(install,))


DEMO_TOKEN = "700000001:demo-bot-on-the-telegram-stand-in"
"""The made-up token of ``serve --demo --bot`` (it opens nothing on the real Telegram)."""


def _demo_bot_settings(settings: Settings, telegram: Any) -> Settings:
    """The bot pointed at the stand-in, and anyone may sign up: a demo has no operator to
    let people in (only here; ``QUARTSIG_SIGNUP`` stays ``closed`` by default otherwise)."""
    logging.getLogger("quartsig").warning(
        "demo bot: @%s on a built-in Telegram stand-in at %s; sign-up is open (demo only)",
        telegram.bot["username"], telegram.url)
    return settings.replace(bot_token=telegram.token, bot_api_url=telegram.url, signup="open")


def _register_demo_webhook(settings: Settings, base_url: str) -> None:
    """``setWebhook`` on the stand-in, to where this server listens, as
    ``quartsig bot webhook set`` would: the stand-in then pushes the chat's messages here."""
    from quartsig.telegram.client import make_bot

    token = settings.bot_token or ""

    async def work() -> None:
        bot = make_bot(token, settings.bot_api_url)
        try:
            await _set_webhook(bot, base_url, token)
        finally:
            await bot.session.close()

    _telegram(work)


def _collect(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    logs.setup(settings.log_format, settings.log_probes)
    if not settings.redis_url:
        raise ConfigError("QUARTSIG_REDIS_URL: must be set for `quartsig collect` (a collector "
                          "apart from the servers shares its data through Redis)")
    _check_redis(settings)
    # The database and the alerts too: when this process leads, it evaluates the rules.
    components: list[Component] = [
        DatabaseComponent(), FeedComponent(accounts=False), AlertsComponent()]
    state = build_state(settings, demo=args.demo, components=components)
    log = logging.getLogger("quartsig")
    log.info("%s", _startup_line(settings, "a collector", probes=settings.collect_bind))
    asyncio.run(server.run_until_signalled(state, settings.collect_bind))
    log.info("quartsig stopped")
    return 0


def _bot_error() -> type[Exception]:
    from quartsig.telegram.client import BotError

    return BotError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(logging.INFO if args.command in ("serve", "collect") else logging.WARNING)
    try:
        return int(args.handler(args))
    except (ConfigError, database.DatabaseError, PluginError, server.StartError,
            _bot_error()) as error:
        print(f"quartsig: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except accounts.AccountError as error:
        print(f"quartsig: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
