"""Settings, read once from ``QUARTSIG_*`` environment variables.

Every setting is parsed and validated here, at start-up, so that a typo in a
deployment fails loudly with the variable's name instead of surfacing later as
a confusing runtime error deep inside a tick.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from quartsig.domain.addresses import Network, parse_networks

PREFIX = "QUARTSIG_"

FALLBACKS = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL"}
#: Seconds TradingView's "no such symbol" is remembered (one cache, the state's, shared with the
#: collector): a client retrying one gets its error at once, and an early fetch of it costs no
#: request.
UNKNOWN_SYMBOL_TTL = 600.0
"""Settings read from a platform's own variable (its database and Redis add-ons, as Heroku
and its kin name them) when their ``QUARTSIG_*`` one is unset."""


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "quartsig"


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with the directory itself ``0700``.

    It holds the generated key and the SQLite file: nobody but the server's user may
    list or read it. An existing directory is left as its owner set it.
    """
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode passes through the umask


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError("must be a positive number")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be zero or a positive integer")
    return number


def _database_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"sqlite", "postgres", "postgresql", "asyncpg", "psycopg"}:
        raise ValueError("must start with sqlite://, postgres:// or postgresql://")
    try:  # checked here, or the driver fails later with a traceback; never echo the URL
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    return value


def _proxies(value: str) -> tuple[str, ...]:
    urls = _split(value)
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in {"socks5", "socks5h", "socks4", "socks4a", "http"} or not (
            parts.hostname
        ):
            # The URL may carry credentials: never echo it back.
            raise ValueError("each entry must look like socks5://[user:pass@]host:port")
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is None:
            raise ValueError("each proxy needs a port, e.g. socks5://127.0.0.1:9050")
    return urls


def _origins(value: str) -> tuple[str, ...]:
    origins = _split(value)
    for origin in origins:
        if origin != "*" and not urlsplit(origin).scheme:
            raise ValueError("each origin must look like https://example.com (or be *)")
    return tuple(origin.rstrip("/") for origin in origins)


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix":  # checked here, or redis-py fails later with a traceback
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0 or not parts.hostname:
            raise ValueError("must look like redis://[user:password@]host[:port][/db], "
                             "the port a number from 1 to 65535")
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise ValueError("the database (after the last /) must be a number such as 0")
    return value


def _exchange(value: str) -> str:
    value = value.strip().upper()
    if not value or not value.replace("_", "").isalnum():
        raise ValueError("must be an exchange prefix such as FX_IDC")
    return value


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError("must be zero or a positive number")
    return number


def _headers(value: str) -> tuple[tuple[str, str], ...]:
    import json

    try:
        parsed = json.loads(value) if value.strip() else {}
    except json.JSONDecodeError:
        raise ValueError('must be a JSON object like {"Origin": "https://example.com"}') from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise ValueError("must be a JSON object of strings")
    return tuple(parsed.items())


MIN_BOT_SECRET = 32
"""Characters a bot secret needs: a short one could be guessed through /api/tokens."""


def _bot_secret(value: str) -> str:
    if len(value.strip()) < MIN_BOT_SECRET:
        raise ValueError(f"must be at least {MIN_BOT_SECRET} characters (try `quartsig keygen`)")
    if value != value.strip():  # the Authorization header is read stripped: it never matched
        raise ValueError("has whitespace at its start or end (a pasted newline?): remove it")
    return value


# -- the Telegram bot (quartsig.telegram) --------------------------------------------------

SIGNUP_MODES = ("open", "invite", "closed")


def _bot_token(value: str) -> str:
    bot_id, colon, secret = value.strip().partition(":")
    if not (bot_id.isdigit() and colon and secret
            and secret.replace("_", "").replace("-", "").isalnum()):
        raise ValueError("must look like 123456789:AA... (the token @BotFather gave)")
    return value.strip()


def _signup(value: str) -> str:
    mode = value.strip().lower()
    if mode not in SIGNUP_MODES:
        raise ValueError(f"must be one of {', '.join(SIGNUP_MODES)}")
    return mode


def _bind(value: str) -> str:
    host, _, port = value.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must look like HOST:PORT, e.g. 127.0.0.1:9151")
    return value.strip()


def _choice(*choices: str) -> Callable[[str], str]:
    def parse_choice(value: str) -> str:
        if value.strip().lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value.strip().lower()

    return parse_choice


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(value: str) -> Any:
        return parse(value) if value.strip() else None

    return parse_optional


def _setting(default: Any, parse: Callable[[str], Any], doc: str,
             shown: Callable[[Any], Any] | None = None) -> Any:
    """A field of :class:`Settings`; ``shown`` is what its ``repr`` prints instead of a secret."""
    return field(default=default, metadata={"parse": parse, "doc": doc, "shown": shown})


HIDDEN = "<hidden>"


def _hidden(value: Any) -> Any:
    return value if not value else HIDDEN


def _without_password(url: str | None) -> str | None:
    """``url`` with its password (if any) hidden: a repr ends up in logs and tracebacks."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{HIDDEN}@{netloc[2]}"))


def _urls_without_passwords(urls: tuple[str, ...]) -> tuple[str | None, ...]:
    return tuple(_without_password(url) for url in urls)


def _header_names(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((name, HIDDEN) for name, _ in headers)


@dataclass(frozen=True)
class Settings:
    """Everything quartsig can be told. Field names are the variables without the prefix."""

    data_dir: Path = _setting(
        None, Path,
        "Where the SQLite file and a generated key live (created on first run, mode `0700`).",
    )
    database_url: str = _setting(
        None, _database_url, "sqlite://... (default: DATA_DIR/quartsig.sqlite3) or postgres://...",
        _without_password,
    )
    secret_keys: tuple[str, ...] = _setting(
        (), _split, "Comma-separated Fernet keys; the first encrypts, all decrypt.", _hidden
    )
    token_ttl: int = _setting(86400, _positive_int, "Seconds a token stays valid.")
    scanner_url: str = _setting(
        "https://scanner.tradingview.com", _url, "TradingView's scanner base URL."
    )
    interval: float = _setting(20.0, _positive_float, "Collector period in seconds.")
    proxies: tuple[str, ...] = _setting(
        (), _proxies, "Comma-separated socks5:// proxy URLs; empty means direct.",
        _urls_without_passwords,
    )
    allowed_origins: tuple[str, ...] = _setting(
        (), _origins, "Origins allowed to open /ws besides the server's own; * allows any."
    )
    bot_secret: str | None = _setting(
        None, _optional(_bot_secret),
        "Bearer secret (32+ characters) for POST /api/tokens; the route is off when unset.",
        _hidden,
    )
    default_exchange: str = _setting(
        "FX_IDC", _exchange, "Exchange prefix given to a bare ticker such as USDJPY."
    )
    plugins_dir: Path = _setting(
        Path("plugins"), Path, "Directory whose .py files are loaded as plugins."
    )
    plugin_quarantine: float = _setting(
        600.0, _positive_float,
        "Seconds a column TradingView refused is left out of requests before it is tried again.",
    )
    base_url: str | None = _setting(
        None, _optional(_url), "Public URL of the board, used to build token links."
    )
    max_subscriptions: int = _setting(
        128, _positive_int, "Subscriptions one connection may hold."
    )
    max_frame_bytes: int = _setting(
        4096, _positive_int, "Largest client frame accepted; bigger closes with 1009."
    )
    ops_per_second: float = _setting(
        20.0, _positive_float, "Sustained client ops per second (bursts of twice that)."
    )
    heartbeat_interval: float = _setting(
        25.0, _positive_float, "Seconds between the server's heartbeat pings."
    )
    heartbeat_timeout: float = _setting(
        10.0, _positive_float, "Seconds a peer has to answer a ping before it is dropped."
    )
    gc_freeze_period: float = _setting(
        1.0, _non_negative_float, "Seconds between two freezes of what survived into the cycle "
        "collector's permanent generation, with a full collection now and then between ticks "
        "(quartsig.ops.freezer); 0 turns it off (the start-up is frozen still).",
    )
    send_timeout: float = _setting(
        10.0, _positive_float, "Seconds a stalled send may last before the client is closed."
    )
    auth_timeout: float = _setting(
        5.0, _positive_float, "Seconds a new connection has to authenticate."
    )
    max_connections: int = _setting(
        10000, _non_negative_int, "Sockets open at once, counting those not yet authenticated; "
        "beyond it the handshake gets HTTP 503 (0: no cap)."
    )
    max_connections_per_address: int = _setting(
        64, _non_negative_int, "Sockets open at once from one public client address (an IPv6 "
        "/64 counts as one), authenticated or not; beyond it the handshake gets HTTP 429 "
        "(0: no cap)."
    )
    max_pending_connections: int = _setting(
        2500, _non_negative_int, "Sockets not yet authenticated open at once: their own share "
        "of QUARTSIG_MAX_CONNECTIONS, so they cannot take the room of authenticated ones; "
        "beyond it the handshake gets HTTP 503 (0: no share)."
    )
    max_connections_per_account: int = _setting(
        20, _non_negative_int, "Authenticated sockets one account may hold; the next is "
        "closed with 4429 (0: no cap)."
    )
    trusted_proxies: tuple[Network, ...] = _setting(
        (), parse_networks, "Comma-separated addresses or CIDRs of reverse proxies whose "
        "X-Forwarded-For is believed."
    )
    scanner_concurrency: int = _setting(
        4, _positive_int, "Scanner requests in flight at once."
    )
    scanner_timeout: float = _setting(
        10.0, _positive_float, "Seconds one scanner request may take."
    )
    scanner_min_start_interval: float = _setting(
        0.0, _non_negative_float, "Seconds between scanner request starts (0: no pacing)."
    )
    scanner_headers: tuple[tuple[str, str], ...] = _setting(
        (), _headers, "Extra scanner request headers, as a JSON object.", _header_names
    )
    tor_isolation: bool = _setting(
        False, _boolean, "Give each proxy slot its own SOCKS credentials (Tor: its own circuit)."
    )
    early_fetch_budget: float = _setting(
        120.0, _positive_float, "Scanner requests per minute early fetches of new keys may make "
        "(bursts of as many); a key beyond it waits for the next tick."
    )
    early_keys_per_minute: int = _setting(
        60, _positive_int, "Distinct new keys (nobody has their data) per account per minute "
        "fetched early; the next ones wait for the next tick (a deferred notice)."
    )
    new_keys_per_minute: int = _setting(
        300, _positive_int, "Distinct new keys one account may subscribe to per minute; beyond "
        "it: quota_exceeded."
    )
    max_keys: int = _setting(
        20000, _positive_int,
        "Distinct keys watched (a cluster's, all nodes together); beyond it: key_limit."
    )
    early_fetches_per_account: float = _setting(
        5.0, _positive_float, "Early-fetch requests per minute one account's new keys may cost "
        "(bursts of as many); beyond it they wait for the next tick (a deferred notice)."
    )
    max_keys_per_account: int = _setting(
        256, _non_negative_int, "Distinct keys one account may hold over all its sockets; "
        "beyond it: account_key_limit (0: no cap)."
    )
    backoff_max: float = _setting(
        300.0, _positive_float, "Longest wait, in seconds, between tries while TradingView "
        "throttles every request."
    )
    redis_url: str | None = _setting(
        None, _optional(_redis_url), "redis://host:6379/0 turns on the cluster mode "
        "(default: the platform's REDIS_URL; unset: one process, in memory).",
        _without_password,
    )
    redis_prefix: str = _setting(
        "quartsig:", str, "Prefix of every Redis key, so deployments can share one Redis."
    )
    lease_ttl: float = _setting(
        3.0, _positive_float, "Seconds the collector's lease lasts unless renewed (cluster mode)."
    )
    redis_stream_bytes: int = _setting(
        64 * 2**20, _positive_int, "Approximate bytes the cluster's change stream keeps in "
        "Redis (at most 2 000 entries); a node further behind resyncs from the latest values."
    )
    # -- alerts (docs/alerts.md) --
    alerts_max_rules: int = _setting(
        100, _positive_int, "Alert rules one account may have."
    )
    alerts_reload: float = _setting(
        5.0, _positive_float,
        "Seconds between two looks for alert rules changed on other nodes (the collecting "
        "node reloads them when they changed).",
    )
    alerts_lease: float = _setting(
        60.0, _positive_float, "Seconds a node's claim of an alert delivery lasts: above the "
        "slowest send. A node that dies mid-send leaves it to another after this long (in a "
        "cluster, its pending stream entries too).",
    )
    alerts_poll: float = _setting(
        30.0, _positive_float, "Seconds between two looks at the database for alert "
        "deliveries while the cluster's Redis stream announces them (a safety net for an "
        "announcement lost; without Redis, or with it away, the look is every 5 s).",
    )
    alerts_storm_count: int = _setting(
        15, _positive_int, "Firings of one alert rule within QUARTSIG_ALERTS_STORM_WINDOW "
        "after which it is paused (its user is told)."
    )
    alerts_storm_window: float = _setting(
        180.0, _positive_float, "Seconds over which QUARTSIG_ALERTS_STORM_COUNT is counted."
    )
    # -- the Telegram bot (quartsig.telegram; docs/bot.md) --------------------------------
    bot_token: str | None = _setting(
        None, _optional(_bot_token), "The bot's token from @BotFather; turns the bot on "
        "(unset: no bot, nothing changes)."
    )
    bot_api_url: str | None = _setting(
        None, _optional(_url), "Bot API server base URL (unset: https://api.telegram.org); "
        "a local Bot API server or the tests' stand-in."
    )
    signup: str = _setting(
        "closed", _signup, "Who /start lets in: open (anyone), invite (a one-time code from "
        "`quartsig invite`) or closed (accounts the operator adds)."
    )
    # -- operations (issue #24): logs and the collector's own health endpoint ----------------
    log_format: str = _setting(
        "text", _choice("text", "json"), "Log lines as text, or one JSON object per line."
    )
    log_probes: bool = _setting(
        False, _boolean, "Write /livez, /readyz, /healthz and /metrics hits to the access log."
    )
    collect_bind: str = _setting(
        "127.0.0.1:9151", _bind,
        "HOST:PORT where `quartsig collect` serves /livez, /readyz and /metrics."
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Read ``QUARTSIG_*`` variables; ``overrides`` (already typed) win over them.

        ``QUARTSIG_DATABASE_URL`` and ``QUARTSIG_REDIS_URL`` fall back to the platform's
        ``DATABASE_URL`` and ``REDIS_URL`` (:data:`FALLBACKS`).
        """
        environ = os.environ if environ is None else environ
        fallbacks = FALLBACKS
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            name = PREFIX + item.name.upper()
            # An empty variable counts as unset (``QUARTSIG_DATA_DIR=`` must not mean ".").
            if not environ.get(name, "").strip() and \
                    environ.get(fallbacks.get(item.name, ""), "").strip():
                name = fallbacks[item.name]
            if item.name in overrides:
                values[item.name] = overrides[item.name]
            elif environ.get(name, "").strip():
                try:
                    values[item.name] = item.metadata["parse"](environ[name])
                except (ValueError, TypeError) as error:
                    raise ConfigError(f"{name}: {error}") from None
        if overrides.get("bot_secret") is not None:
            try:
                _bot_secret(overrides["bot_secret"])
            except ValueError as error:
                raise ConfigError(f"{PREFIX}BOT_SECRET: {error}") from None
        unknown = set(overrides) - {item.name for item in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        data_dir = Path(values.get("data_dir") or _default_data_dir())
        values["data_dir"] = data_dir
        if not values.get("database_url"):
            values["database_url"] = f"sqlite://{data_dir / 'quartsig.sqlite3'}"
        if values.get("heartbeat_timeout", cls.heartbeat_timeout) >= values.get(
            "heartbeat_interval", cls.heartbeat_interval
        ):
            raise ConfigError(
                f"{PREFIX}HEARTBEAT_TIMEOUT: must be shorter than {PREFIX}HEARTBEAT_INTERVAL"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        """Every field, secrets hidden (keys, the bot secret, passwords in URLs, header
        values): a repr ends up in logs, tracebacks and bug reports."""
        shown = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            hide = item.metadata.get("shown")
            shown.append(f"{item.name}={(hide(value) if hide is not None else value)!r}")
        return f"Settings({', '.join(shown)})"


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, doc) for every setting: the README table is checked against it."""
    rows = []
    for item in dataclasses.fields(Settings):
        default = item.default
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        rows.append((PREFIX + item.name.upper(), "" if default is None else str(default),
                     item.metadata["doc"]))
    return rows
