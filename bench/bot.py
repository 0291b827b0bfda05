"""Webhook update -> reply latency of the bot, on the Telegram stand-in.

Starts the Telegram stand-in (in this process, its own thread) and one real ``quartsig serve``
(Hypercorn subprocess, SQLite, ``QUARTSIG_SIGNUP=open``), then pushes updates to the webhook
one at a time, as Telegram would, and times each from the start of the push to the moment the
stand-in receives the bot's ``sendMessage`` for that chat. Two kinds: ``/start`` from a new user
(sign-up: an account row, a chat row, a token) and ``/board`` from a known one (a token). Prints
p50/p90/p99 and the mean per kind, in milliseconds::

    python -m bench.bot            # [--updates 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from quartsig.demo.telegram import TOKEN, TelegramStandin
from quartsig.telegram.client import webhook_path, webhook_secret
from tests.support.measure import percentile
from tests.support.processes import QuartsigServer, quartsig_env


def _round_trip(telegram: TelegramStandin, url: str, secret: str, chat: int, text: str,
                count: int) -> float:
    """Seconds from pushing ``text`` from ``chat`` to the bot's ``count``-th reply to it."""
    started = time.monotonic()
    status = telegram.push(telegram.message(chat, text), url=url, secret=secret)
    if status != 200:
        raise SystemExit(f"webhook answered {status}")
    telegram.wait_sent(chat, count)
    replied = [c.at for c in telegram.calls_to("sendMessage")
               if c.status == 200 and c.params.get("chat_id") == str(chat)][count - 1]
    return replied - started


def run(updates: int, warmup: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp, TelegramStandin.running() as telegram:
        env = quartsig_env(Path(tmp) / "data", "http://127.0.0.1:9", QUARTSIG_BOT_TOKEN=TOKEN,
                           QUARTSIG_BOT_API_URL=telegram.url, QUARTSIG_SIGNUP="open",
                           QUARTSIG_BASE_URL="https://board.example.com")
        with QuartsigServer.start(env, Path(tmp)) as server:
            url = f"{server.url}/telegram/{webhook_path(TOKEN)}"
            secret = webhook_secret(TOKEN)
            for chat in range(10_000, 10_000 + warmup):
                _round_trip(telegram, url, secret, chat, "/start", 1)
            times: dict[str, list[float]] = {"/start (sign-up)": [], "/board": []}
            users = range(20_000, 20_000 + updates)
            for chat in users:
                times["/start (sign-up)"].append(
                    _round_trip(telegram, url, secret, chat, "/start", 1))
            for chat in users:
                times["/board"].append(_round_trip(telegram, url, secret, chat, "/board", 2))
            return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    times = run(args.updates, args.warmup)
    print(f"webhook update -> reply on the stand-in, {args.updates} updates each, one at a time")
    print(f"{'kind':<18} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for kind, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"{kind:<18} {percentile(ms, 50):>8.1f} {percentile(ms, 90):>8.1f} "
              f"{percentile(ms, 99):>8.1f} {statistics.fmean(ms):>8.1f}")


if __name__ == "__main__":
    main()
