"""The console script, run as a real subprocess with its own data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from quartsig.config import ConfigError
from quartsig.server import DEFAULT_BIND, hypercorn_config

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARTSIG_")}
    env["QUARTSIG_DATA_DIR"] = str(tmp_path / "data")

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "quartsig", *args],
            env={**env, **extra_env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def _key(tmp_path: Path) -> bytes:
    return (tmp_path / "data" / "secret.key").read_text().strip().encode()


def test_add_then_issue_prints_a_token_plain_fernet_decrypts(run: Run, tmp_path: Path) -> None:
    added = run("account", "add", "42")
    assert added.returncode == 0, added.stderr
    assert added.stdout == ""
    issued = run("token", "issue", "42")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert issued.stdout == token + "\n"
    assert Fernet(_key(tmp_path)).decrypt(token) == b"42"
    assert "QUARTSIG_SECRET_KEYS" in issued.stderr  # the generated key is announced loudly
    assert _key(tmp_path).decode() not in issued.stderr + added.stderr


def test_configured_keys_are_used(run: Run) -> None:
    first, second = Fernet.generate_key(), Fernet.generate_key()
    keys = f"{first.decode()},{second.decode()}"
    assert run("account", "add", "7", QUARTSIG_SECRET_KEYS=keys).returncode == 0
    issued = run("token", "issue", "7", QUARTSIG_SECRET_KEYS=keys)
    assert Fernet(first).decrypt(issued.stdout.strip()) == b"7"
    assert issued.stderr == ""


def test_account_lifecycle(run: Run) -> None:
    assert run("account", "add", "42").returncode == 0
    again = run("account", "add", "42")
    assert (again.returncode, "already exists" in again.stderr) == (0, True)
    assert run("account", "add", "43").returncode == 0
    assert run("account", "disable", "42").returncode == 0
    readd = run("account", "add", "42")
    assert "disabled" in readd.stderr
    listed = run("account", "list")
    rows = [line.split("\t")[:2] for line in listed.stdout.splitlines()]
    assert rows == [["42", "disabled"], ["43", "active"]]
    refused = run("token", "issue", "42")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert "account 42 is disabled" in refused.stderr
    assert run("account", "enable", "42").returncode == 0
    assert run("token", "issue", "42").returncode == 0


def test_unknown_accounts_are_refused(run: Run) -> None:
    for args in (("token", "issue", "99"), ("account", "disable", "99")):
        result = run(*args)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.strip().splitlines()[-1] == "quartsig: account 99 does not exist"


def test_link_needs_a_base_url(run: Run) -> None:
    run("account", "add", "42")
    # (issue 21) without it, the link points where `quartsig serve` would listen...
    assert run("token", "issue", "42", "--link").stdout.startswith(
        "http://127.0.0.1:8000/#token=")
    # ...and when that cannot be told either, it is refused in one line
    refused = run("token", "issue", "42", "--link", PORT="not-a-port")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "QUARTSIG_BASE_URL" in refused.stderr
    linked = run("token", "issue", "42", "--link", QUARTSIG_BASE_URL="https://b.example/")
    assert linked.returncode == 0
    assert linked.stdout.startswith("https://b.example/#token=gAAAAA")


@pytest.mark.parametrize("bad_id", ["x", "0", "-1", "9223372036854775808"])
def test_invalid_ids_are_usage_errors(run: Run, bad_id: str) -> None:
    result = run("account", "add", "--", bad_id)
    assert result.returncode == 2
    assert "invalid Telegram id" in result.stderr


def test_malformed_env_is_one_line_naming_the_variable(run: Run) -> None:
    result = run("account", "list", QUARTSIG_TOKEN_TTL="soon")
    assert result.returncode == 2
    assert result.stderr.startswith("quartsig: QUARTSIG_TOKEN_TTL:")
    assert len(result.stderr.splitlines()) == 1


def test_a_bad_secret_key_is_not_echoed(run: Run) -> None:
    result = run("token", "issue", "42", QUARTSIG_SECRET_KEYS="my-precious-key")
    assert result.returncode == 2
    assert "QUARTSIG_SECRET_KEYS" in result.stderr
    assert "my-precious-key" not in result.stderr


@pytest.mark.parametrize("command", [("migrate",), ("account", "list"), ("serve",)])
def test_unreachable_database_is_a_clear_error(run: Run, command: tuple[str, ...]) -> None:
    result = run(*command, QUARTSIG_DATABASE_URL="postgres://postgres:pw@127.0.0.1:1/x")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("quartsig: cannot reach the database at postgres://postgres:***@")
    assert "Traceback" not in result.stderr
    assert ":pw@" not in result.stderr


def test_migrate_is_repeatable(run: Run, tmp_path: Path) -> None:
    for _ in range(2):
        result = run("migrate")
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "quartsig.sqlite3").is_file()


def test_keygen_prints_a_fresh_key(run: Run) -> None:
    first, second = run("keygen").stdout.strip(), run("keygen").stdout.strip()
    assert first != second
    Fernet(first.encode())


def test_bind_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "hypercorn.toml"
    toml.write_text('bind = ["127.0.0.1:9999"]\nworkers = 1\n')
    missing = tmp_path / "missing.toml"
    assert hypercorn_config(missing, None, {}).bind == [DEFAULT_BIND]
    assert hypercorn_config(toml, None, {}).bind == ["127.0.0.1:9999"]
    assert hypercorn_config(toml, None, {"PORT": "5000"}).bind == ["0.0.0.0:5000"]
    assert hypercorn_config(toml, "10.0.0.1:1", {"PORT": "5000"}).bind == ["10.0.0.1:1"]
    with pytest.raises(ConfigError, match="PORT"):
        hypercorn_config(toml, None, {"PORT": "http"})
    toml.write_text("bind = [")
    with pytest.raises(ConfigError, match=r"hypercorn\.toml"):
        hypercorn_config(toml, None, {})


def test_repo_hypercorn_config_never_logs_the_query_string() -> None:
    config = hypercorn_config(Path(__file__).parent.parent / "hypercorn.toml", None, {})
    assert config.workers == 1
    assert "%(U)s" in config.access_log_format
    for leaky in ("%(q)s", "%(Uq)s", "%(R)s", "%(f)s"):
        assert leaky not in config.access_log_format
    assert config.websocket_max_message_size <= 65536


def test_a_password_in_the_query_is_never_printed(run: Run) -> None:
    result = run("migrate", QUARTSIG_DATABASE_URL="postgres://postgres@127.0.0.1:1/x?password=pw9s3cret")
    assert result.returncode == 2
    assert "pw9s3cret" not in result.stderr
    assert "password=***" in result.stderr


@pytest.mark.parametrize("command", [("migrate",), ("serve",)])
def test_a_bad_database_port_is_one_line(run: Run, command: tuple[str, ...]) -> None:
    result = run(*command, QUARTSIG_DATABASE_URL="postgres://postgres:pw9s3cret@127.0.0.1:99999/x")
    assert result.returncode == 2
    assert result.stderr.startswith("quartsig: QUARTSIG_DATABASE_URL:")
    assert len(result.stderr.splitlines()) == 1
    assert "pw9s3cret" not in result.stderr


def test_a_short_bot_secret_refuses_to_serve(run: Run) -> None:
    result = run("serve", "--bind", "127.0.0.1:1", QUARTSIG_BOT_SECRET="short-secret")
    assert result.returncode == 2
    assert result.stderr.startswith("quartsig: QUARTSIG_BOT_SECRET:")
    assert "short-secret" not in result.stderr


def test_plugins_lists_plugins_profiles_columns_and_sources(run: Run, tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "closing.py").write_text(
        "from quartsig.plugins.hookspecs import hookimpl\n"
        "from quartsig.plugins.profiles import Profile\n\n"
        "@hookimpl\n"
        "def register_profiles():\n"
        "    return [Profile('closing', 'c', ('close', 'RSI[1]'), dict)]\n"
    )
    result = run("plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "quartsig.plugins.builtins.summary (built-in)" in lines
    assert "  summary: Recommend.All" in lines
    assert "plugins/closing.py (file plugins/closing.py)" in lines
    assert "  closing: close, RSI[1]" in lines

    (plugins / "broken.py").write_text(
        "from quartsig.plugins.hookspecs import hookimpl\n"
        "from quartsig.plugins.profiles import Profile\n\n"
        "@hookimpl\n"
        "def register_profiles():\n"
        "    return [Profile('broken', 'b', ('close',), lambda row: {'x': 1 / row['close']})]\n"
    )
    result = run("plugins")
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("quartsig: plugin 'plugins/broken.py': profile 'broken' fails on a row")


# -- configuration errors of every kind: one line, exit 2 (issue #24.5) ------------------------


def _one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


@pytest.mark.parametrize(("url", "says"), [
    ("redis://127.0.0.1:abc/0", "QUARTSIG_REDIS_URL: must look like redis://"),
    ("redis://127.0.0.1:6379/zero", "the database (after the last /) must be a number"),
    ("redis://127.0.0.1:6379/999", "Redis refused the connection: DB index is out of range"),
    ("rediss://127.0.0.1:6379/0", "rediss:// but 127.0.0.1:6379 answers no TLS handshake"),
])
def test_a_redis_url_that_can_never_work_is_one_line_and_exit_2(
        run: Run, url: str, says: str) -> None:
    if "6379" in url and subprocess.run(["redis-cli", "ping"], capture_output=True, text=True,
                                        check=False).stdout.strip() != "PONG":
        pytest.skip("needs the Redis at 127.0.0.1:6379")
    for command in (("serve", "--bind", "127.0.0.1:0"), ("collect",)):
        line = _one_line_exit_2(run(*command, QUARTSIG_REDIS_URL=url))
        assert says in line and line.startswith("quartsig: ")


def test_a_mistyped_config_path_is_one_line_and_exit_2(run: Run) -> None:
    line = _one_line_exit_2(run("serve", "--config", "hypercorn.tml"))
    assert line == "quartsig: --config hypercorn.tml: no such file"


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    from quartsig.config import Settings

    settings = Settings.from_env({"QUARTSIG_DATA_DIR": "", "QUARTSIG_REDIS_URL": " ",
                                  "REDIS_URL": "redis://127.0.0.1:6379/1",
                                  "QUARTSIG_INTERVAL": ""})
    assert settings.data_dir != Path("")  # not the working directory: the default
    assert settings.data_dir.is_absolute()
    assert settings.redis_url == "redis://127.0.0.1:6379/1"  # the platform's, as if unset
    assert settings.interval == 20.0


def test_started_elsewhere_the_start_up_line_says_what_was_not_found(
        run: Run, tmp_path: Path) -> None:
    """From a directory without hypercorn.toml or plugins/, serve says so instead of
    silently serving without them; here it then stops on a taken port."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--bind", f"127.0.0.1:{port}")
    [start] = [line for line in result.stderr.splitlines() if "starting as" in line]
    assert f"bind 127.0.0.1:{port}" in start
    assert "config none (Hypercorn defaults)" in start
    assert "plugins dir none" in start
    assert f"data dir {tmp_path / 'data'}" in start
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(f"quartsig: cannot listen on 127.0.0.1:{port}")
