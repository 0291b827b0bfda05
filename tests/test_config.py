"""Every malformed setting fails at start-up with the variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from quartsig.config import ConfigError, Settings, documented_settings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("QUARTSIG_TOKEN_TTL", "abc"),
        ("QUARTSIG_TOKEN_TTL", "0"),
        ("QUARTSIG_TOKEN_TTL", "-5"),
        ("QUARTSIG_INTERVAL", "0"),
        ("QUARTSIG_INTERVAL", "inf"),
        ("QUARTSIG_DATABASE_URL", "mysql://root@localhost/db"),
        ("QUARTSIG_DATABASE_URL", "quartsig.sqlite3"),
        ("QUARTSIG_SCANNER_URL", "ftp://scanner"),
        ("QUARTSIG_PROXIES", "socks5://127.0.0.1"),
        ("QUARTSIG_PROXIES", "tor"),
        ("QUARTSIG_ALLOWED_ORIGINS", "example.com"),
        ("QUARTSIG_DEFAULT_EXCHANGE", "FX IDC"),
        ("QUARTSIG_BASE_URL", "board.example.com"),
        ("QUARTSIG_MAX_SUBSCRIPTIONS", "many"),
        ("QUARTSIG_HEARTBEAT_TIMEOUT", "30"),
    ],
)
def test_invalid_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({variable: value})
    assert str(error.value).startswith(f"{variable}:")


def test_proxy_credentials_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"QUARTSIG_PROXIES": "socks5://user:s3cret@host"})
    assert "s3cret" not in str(error.value)


def test_defaults_and_derived_values(tmp_path: Path) -> None:
    settings = Settings.from_env({"QUARTSIG_DATA_DIR": str(tmp_path)})
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite://{tmp_path / 'quartsig.sqlite3'}"
    assert settings.token_ttl == 86400
    assert settings.secret_keys == ()
    assert settings.bot_secret is None


def test_values_are_parsed(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "QUARTSIG_SECRET_KEYS": " a , b ,",
            "QUARTSIG_TOKEN_TTL": "60",
            "QUARTSIG_BOT_SECRET": "",
            "QUARTSIG_BASE_URL": "https://board.example.com/",
            "QUARTSIG_DATABASE_URL": "postgres://u:p@db:5432/q",
        }
    )
    assert settings.secret_keys == ("a", "b")
    assert settings.token_ttl == 60
    assert settings.bot_secret is None
    assert settings.base_url == "https://board.example.com"
    assert settings.database_url == "postgres://u:p@db:5432/q"


def test_every_setting_is_documented() -> None:
    rows = documented_settings()
    assert all(variable.startswith("QUARTSIG_") and doc for variable, _, doc in rows)
    assert len({variable for variable, _, _ in rows}) == len(rows)


# -- issue 14: bot secret, DATABASE_URL -------------------------------------------------


@pytest.mark.parametrize("secret", ["x", "y" * 31, "  padded-to-look-long-enough   "])
def test_a_short_bot_secret_refuses_to_start_without_echoing_it(secret: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"QUARTSIG_BOT_SECRET": secret})
    assert str(error.value).startswith("QUARTSIG_BOT_SECRET:")
    assert "32" in str(error.value)
    if secret.strip():
        assert secret not in str(error.value)
    with pytest.raises(ConfigError, match=r"^QUARTSIG_BOT_SECRET:"):
        Settings.from_env({}, bot_secret=secret)  # typed overrides are held to it too


def test_a_long_enough_bot_secret_is_kept() -> None:
    secret = "s" * 32
    assert Settings.from_env({"QUARTSIG_BOT_SECRET": secret}).bot_secret == secret


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:s3cret@db:99999/q",
        "postgres://u:s3cret@db:port/q",
        "postgres://u:s3cret@db:0/q",
        "postgres://u@db:-1/q?password=s3cret",
    ],
)
def test_a_bad_database_port_is_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"QUARTSIG_DATABASE_URL": url})
    message = str(error.value)
    assert message.startswith("QUARTSIG_DATABASE_URL:") and "port" in message
    assert "s3cret" not in message and "\n" not in message


def test_the_platform_database_url_is_the_fallback(tmp_path: Path) -> None:
    platform = "postgres://u:p@db.internal:5432/app"
    own = "postgresql://u:p@other:5432/q"
    environ = {"QUARTSIG_DATA_DIR": str(tmp_path), "DATABASE_URL": platform}
    assert Settings.from_env(environ).database_url == platform
    assert Settings.from_env({**environ, "QUARTSIG_DATABASE_URL": own}).database_url == own
    with pytest.raises(ConfigError, match=r"^DATABASE_URL:"):
        Settings.from_env({"DATABASE_URL": "mysql://root@db/x"})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgres://u:s3cret@db:5432/q", "postgres://u:***@db:5432/q"),
        ("postgres://u@db/q?password=s3cret&sslmode=require",
         "postgres://u@db/q?password=***&sslmode=require"),
        ("postgres://u@db/q?sslmode=require&PASSWORD=s3cret",
         "postgres://u@db/q?sslmode=require&PASSWORD=***"),
        ("postgres://u:s3cret@db/q?password=s3cret", "postgres://u:***@db/q?password=***"),
        ("sqlite:///tmp/q.sqlite3", "sqlite:///tmp/q.sqlite3"),
    ],
)
def test_redact_url_masks_every_password(url: str, shown: str) -> None:
    from quartsig.access.database import redact_url

    assert redact_url(url) == shown


def test_the_platform_redis_url_is_the_fallback(tmp_path: Path) -> None:
    environ = {"QUARTSIG_DATA_DIR": str(tmp_path), "REDIS_URL": "redis://cache.internal:6379/0"}
    assert Settings.from_env(environ).redis_url == "redis://cache.internal:6379/0"
    own = {**environ, "QUARTSIG_REDIS_URL": "redis://own:6379/1"}
    assert Settings.from_env(own).redis_url == "redis://own:6379/1"
    with pytest.raises(ConfigError, match=r"^REDIS_URL:"):
        Settings.from_env({"REDIS_URL": "http://not-redis"})


# -- operations settings (issue #24) ------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "says"), [
    ("QUARTSIG_LOG_FORMAT", "yaml", "QUARTSIG_LOG_FORMAT: must be one of text, json"),
    ("QUARTSIG_LOG_PROBES", "maybe", "QUARTSIG_LOG_PROBES: must be true or false"),
    ("QUARTSIG_COLLECT_BIND", "9151", "QUARTSIG_COLLECT_BIND: must look like HOST:PORT"),
    ("QUARTSIG_COLLECT_BIND", "127.0.0.1:99999", "QUARTSIG_COLLECT_BIND: must look like"),
    ("QUARTSIG_REDIS_URL", "redis://127.0.0.1:abc/0", "QUARTSIG_REDIS_URL: must look like"),
    ("QUARTSIG_REDIS_URL", "redis:///0", "QUARTSIG_REDIS_URL: must look like"),
])
def test_operations_settings_refuse_bad_values_by_name(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value).startswith(says)
    assert "abc" not in str(caught.value)  # a URL may hold a password: never echoed


def test_operations_settings_parse() -> None:
    settings = Settings.from_env({"QUARTSIG_LOG_FORMAT": "JSON", "QUARTSIG_LOG_PROBES": "yes",
                                  "QUARTSIG_COLLECT_BIND": "0.0.0.0:9200",
                                  "QUARTSIG_REDIS_URL": "rediss://u:p@redis.example:6380/2"})
    assert (settings.log_format, settings.log_probes, settings.collect_bind) == (
        "json", True, "0.0.0.0:9200")
    assert settings.redis_url == "rediss://u:p@redis.example:6380/2"


# -- issue 20, point 7 ----------------------------------------------------------------------


def test_the_repr_hides_every_secret_and_keeps_the_rest() -> None:
    """A repr ends up in logs and tracebacks; it printed the keys, the bot secret and every
    password in full."""
    key, bot = "k" * 44, "b" * 40
    settings = Settings.from_env({
        "QUARTSIG_SECRET_KEYS": key,
        "QUARTSIG_BOT_SECRET": bot,
        "QUARTSIG_DATABASE_URL": "postgres://quartsig:dbpass@db:5432/q",
        "QUARTSIG_REDIS_URL": "redis://:redispass@cache:6379/0",
        "QUARTSIG_PROXIES": "socks5://user:proxypass@proxy:1080",
        "QUARTSIG_SCANNER_HEADERS": '{"Cookie": "sessionid=cookiepass"}',
    })
    shown = repr(settings)
    for secret in (key, bot, "dbpass", "redispass", "proxypass", "cookiepass"):
        assert secret not in shown, secret
    assert "postgres://quartsig:<hidden>@db:5432/q" in shown
    assert "socks5://user:<hidden>@proxy:1080" in shown and "'Cookie'" in shown
    assert "max_connections=10000" in shown  # the rest as it is
    assert settings.bot_secret == bot  # hidden from the repr only


@pytest.mark.parametrize("padding", [" ", "\n", "\t", "\r\n"])
def test_a_bot_secret_with_whitespace_at_its_ends_is_refused_at_start(padding: str) -> None:
    """The Authorization header is read stripped, so such a secret never matched: the bot got
    401 for ever. One line says why, without the secret."""
    secret = "s" * 40
    for value in (secret + padding, padding + secret):
        with pytest.raises(ConfigError) as error:
            Settings.from_env({"QUARTSIG_BOT_SECRET": value})
        message = str(error.value)
        assert message.startswith("QUARTSIG_BOT_SECRET:") and "whitespace" in message
        assert "\n" not in message and secret not in message
