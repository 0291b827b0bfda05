"""The bot's command line, as a new user would run it: links without ``QUARTSIG_BASE_URL``,
``serve --demo``'s ready link, invites, and the webhook's registration on the stand-in."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from quartsig.demo.telegram import TOKEN, TelegramStandin
from tests.support.net import wait_until
from tests.support.processes import REPO, QuartsigServer, quartsig_cli, quartsig_env


@pytest.fixture
def telegram() -> Iterator[TelegramStandin]:
    with TelegramStandin.running() as running:
        yield running


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quartsig", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_token_issue_link_falls_back_to_where_serve_listens(tmp_path: Path) -> None:
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9")
    quartsig_cli(env, "account", "add", "42")
    link = quartsig_cli(env, "token", "issue", "42", "--link").strip()
    assert link.startswith("http://127.0.0.1:8000/#token=")  # hypercorn.toml's bind
    key = env["QUARTSIG_SECRET_KEYS"].encode()
    assert Fernet(key).decrypt(link.partition("#token=")[2]) == b"42"
    link = quartsig_cli({**env, "PORT": "9123"}, "token", "issue", "42", "--link").strip()
    assert link.startswith("http://127.0.0.1:9123/#token=")  # 0.0.0.0:$PORT, opened locally


def test_serve_demo_prints_a_ready_board_link(tmp_path: Path) -> None:
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9")
    with QuartsigServer.start(env, tmp_path, "--demo") as server:
        found = wait_until(lambda: re.search(r"demo board \(account 1\): (\S+)",
                                             server.tail(200)), 30, what="the demo link")
        link = found.group(1)
        assert link.startswith(f"{server.url}/#token=")
        key = env["QUARTSIG_SECRET_KEYS"].encode()
        assert Fernet(key).decrypt(link.partition("#token=")[2]) == b"1"
        assert quartsig_cli(env, "account", "list").startswith("1\tactive\t")


def test_invite_webhook_set_info_delete(tmp_path: Path, telegram: TelegramStandin) -> None:
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9", QUARTSIG_BOT_TOKEN=TOKEN,
                       QUARTSIG_BOT_API_URL=telegram.url)
    links = quartsig_cli(env, "invite", "--count", "2").split()
    assert len(links) == 2 and len(set(links)) == 2
    assert all(re.fullmatch(r"https://t\.me/quartsig_test_bot\?start=[\w-]{16}", x)
               for x in links)

    refused = _run(env, "bot", "webhook", "set")
    assert refused.returncode == 2
    assert refused.stderr.startswith("quartsig: QUARTSIG_BASE_URL: must be set")

    env["QUARTSIG_BASE_URL"] = "https://board.example.com"
    assert quartsig_cli(env, "bot", "webhook", "set").startswith("webhook set")
    assert telegram.webhook_url.startswith("https://board.example.com/telegram/")
    assert len(telegram.webhook_secret) >= 32
    info = quartsig_cli(env, "bot", "webhook", "info")
    assert info.startswith("url: https://board.example.com/telegram/...")
    assert telegram.webhook_url.rsplit("/", 1)[1] not in info  # the secret path is not printed
    polling = _run(env, "bot", "poll")
    assert polling.returncode == 2 and "webhook is set" in polling.stderr
    quartsig_cli(env, "bot", "webhook", "delete")
    assert telegram.webhook_url == ""


def test_bot_commands_need_a_token(tmp_path: Path) -> None:
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9")
    done = _run(env, "bot", "webhook", "info")
    assert done.returncode == 2
    assert done.stderr.strip() == ("quartsig: QUARTSIG_BOT_TOKEN: must be set (the token "
                                   "@BotFather gave)")
