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
