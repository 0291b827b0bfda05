"""The bot in a cluster, with real processes on the shared Redis: two ``serve`` nodes given the
same update answer it once; two ``bot poll`` processes never poll at once."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from quartsig.demo.telegram import TOKEN, TelegramStandin
from quartsig.telegram.client import webhook_path, webhook_secret
from tests.support.net import wait_until
from tests.support.processes import (
    REPO,
    QuartsigServer,
    Standin,
    quartsig_env,
    stop_process,
)

pytestmark = pytest.mark.e2e

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    name = f"test:{uuid.uuid4().hex[:8]}:"
    yield name
    keys = client.keys(name + "*")
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def telegram() -> Iterator[TelegramStandin]:
    with TelegramStandin.running() as running:
        yield running


@pytest.fixture
def env(tmp_path: Path, redis_prefix: str, telegram: TelegramStandin) -> Iterator[dict[str, str]]:
    with Standin.start(tmp_path) as standin:
        yield quartsig_env(tmp_path / "data", standin.url, QUARTSIG_REDIS_URL=REDIS_URL,
                           QUARTSIG_REDIS_PREFIX=redis_prefix, QUARTSIG_BOT_TOKEN=TOKEN,
                           QUARTSIG_BOT_API_URL=telegram.url, QUARTSIG_SIGNUP="open")


def test_the_same_update_delivered_to_two_nodes_gets_one_reply(
    tmp_path: Path, env: dict[str, str], telegram: TelegramStandin, redis_prefix: str
) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with QuartsigServer.start(env, tmp_path / "a") as a, \
            QuartsigServer.start(env, tmp_path / "b") as b:
        hooks = [f"{node.url}/telegram/{webhook_path(TOKEN)}" for node in (a, b)]
        secret = webhook_secret(TOKEN)
        update = telegram.message(901, "/start")
        with ThreadPoolExecutor(2) as pool:  # at once, as two deliveries racing would
            statuses = list(pool.map(lambda url: telegram.push(update, url=url, secret=secret),
                                     hooks))
        assert statuses == [200, 200]
        # Each node decided before it answered 200; one holds the update's claim.
        holder = redis.Redis.from_url(REDIS_URL).get(
            f"{redis_prefix}bot:update:{update['update_id']}")
        assert holder is not None
        # A later update through each node: once both are answered, the first is settled too.
        for url in hooks:
            assert telegram.push(telegram.message(901, "/help"), url=url, secret=secret) == 200
        sent = telegram.wait_sent(901, 3)
        boards = [m for m in sent if "reply_markup" in m]
        assert len(boards) == 1, sent
        assert len(sent) == 3


def _poll(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "quartsig", "bot", "poll"], env=env,
                                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)


def test_only_one_poller_polls_and_it_answers(
    tmp_path: Path, env: dict[str, str], telegram: TelegramStandin
) -> None:
    first = _poll(env, tmp_path / "first.log")
    try:
        wait_until(lambda: telegram.calls_to("getUpdates"), 60, what="the first poller")
        second = subprocess.run([sys.executable, "-m", "quartsig", "bot", "poll"], env=env,
                                cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        first_log = (tmp_path / "first.log").read_text(errors="replace")
        assert second.returncode == 2, (second.stderr, first_log)
        assert second.stderr.strip().count("\n") == 0, (second.stderr, first_log)
        assert "another `quartsig bot poll` holds the bot" in second.stderr
        telegram.enqueue(telegram.message(902, "/start"))
        [welcome] = telegram.wait_sent(902, 1)
        assert "reply_markup" in welcome
        assert first.poll() is None
    finally:
        stop_process(first)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
