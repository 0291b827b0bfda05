"""The bot's command line, as a new user would run it: links without ``QUARTSIG_BASE_URL``,
``serve --demo``'s ready link, invites, and the webhook's registration on the stand-in."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from quartsig.demo.telegram import TOKEN, TelegramStandin
from tests.support.net import http, wait_until
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


def test_serve_bot_needs_demo_and_prints_no_link_it_cannot_serve(tmp_path: Path) -> None:
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9")
    alone = _run(env, "serve", "--bot")
    assert alone.returncode == 2
    assert alone.stderr.strip() == ("quartsig: --bot: only with --demo (a real bot needs "
                                    "QUARTSIG_BOT_TOKEN; see docs/bot.md)")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run(env, "serve", "--demo", "--bot", "--bind", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(f"quartsig: cannot listen on 127.0.0.1:{port}")
    assert done.stdout == ""  # no link to a server that is not there


def test_serve_demo_bot_pushes_to_itself_and_links_to_the_base_url(tmp_path: Path) -> None:
    """With ``QUARTSIG_BASE_URL`` set, the buttons lead there, but the stand-in, on this
    machine, still reaches the bot where the server listens."""
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9",
                       QUARTSIG_BASE_URL="https://board.example.com", QUARTSIG_BOT_TOKEN=TOKEN)
    with QuartsigServer.start(env, tmp_path, "--demo", "--bot") as server:
        found = wait_until(lambda: re.search(r"demo Telegram chat \(user 42\): (\S+)",
                                             server.tail(200)), 30, what="the chat link")
        assert "QUARTSIG_BOT_TOKEN and QUARTSIG_BOT_API_URL are not used" in server.tail(200)
        chat = found.group(1)
        request = urllib.request.Request(f"{chat}/send", data=b"text=%2Fstart", method="POST",
                                         headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        log = wait_until(lambda: _log_with(chat, "Open board"), 30, what="the bot's reply")
        assert 'href="https://board.example.com/#token=' in log
        assert "sign-up is open (demo only)" in server.tail(200)


def _log_with(chat: str, text: str) -> str | None:
    status, body = http("GET", f"{chat}/log?since=")
    html = json.loads(body)["html"] if status == 200 else ""
    return html if text in html else None
