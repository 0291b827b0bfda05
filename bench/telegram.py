"""Alerts through Telegram: publication -> the stand-in's receipt, and a burst under its limits.

    python -m bench.telegram [--count 100] [--gap 0.1]
    python -m bench.telegram --burst 300 --chats 250 [--nodes 2 --redis redis://127.0.0.1:6379]

Everything runs in one process on a SQLite file, as ``bench.alerts --delivery`` does, but the
channel is the ``telegram`` one and the far end the Telegram Bot API stand-in
(:mod:`quartsig.demo.telegram`, in its own thread). Times are the stand-in's receipt
(``time.monotonic`` when it answered) minus the moment before the recorder was handed the
publication.

The default run: ``--count`` publications, one every ``--gap`` seconds, each moving one key
whose rule belongs to its own chat, so no limit applies; it prints the median, p99 (nearest
rank) and max of publication -> receipt (issue #22's target: p99 < 1 s).

``--burst N``: one publication moves N keys at once, their rules spread over ``--chats``
chats (fewer chats than keys: some get two triggers, due together, so one digest), and the
stand-in enforces Telegram's limits (1 per chat per second, 30 a second in all). ``--nodes``
delivery workers, each with its own bot client and channel, share the pace (in Redis with
``--redis``, on a fresh key prefix; in memory otherwise, which is one node's view).
``--unpaced`` leaves the pace nearly open: the control, what the stand-in says to a bot that
does not pace itself. It prints how many messages arrived, over how long, the sustained rate,
and how many 429s the stand-in gave (the target: none, at ~25/s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from quartsig.access import accounts, database
from quartsig.access.tokens import TokenAuthority
from quartsig.alerts import storage
from quartsig.alerts.delivery import Deliverer
from quartsig.alerts.recorder import Recorder
from quartsig.cluster.pace import MemoryPace, Pace, RedisPace
from quartsig.config import Settings
from quartsig.demo.telegram import TOKEN, TelegramStandin
from quartsig.domain.model import Batch, Key
from quartsig.telegram import subscriptions
from quartsig.telegram.channel import TelegramChannel
from quartsig.telegram.client import make_bot
from quartsig.telegram.service import BotService

FIRST_CHAT = 10_000


def data(rating: float) -> dict[str, Any]:
    return {"Recommend.All": rating, "rec.all": "BUY" if rating >= 0.1 else "NEUTRAL"}


def tickers(text: str) -> list[str]:
    """The keys' tickers a message names: one alert's second line, or each line of a digest
    (``• K3 1h: NEUTRAL → BUY``)."""
    return [line.removeprefix("• ").partition(" ")[0] for line in text.split("\n")
            if line.removeprefix("• ").startswith("K")]


def nearest_rank(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * int(share * 100) // 100) - 1)]


async def _setup(keys: int, chats: int) -> list[Key]:
    """An account, its telegram channel and one rule per key, neighbouring keys in one chat
    when there are fewer chats than keys (their deliveries are due together: a digest)."""
    for chat in range(FIRST_CHAT, FIRST_CHAT + chats):
        await accounts.add(chat)
        await subscriptions.started(chat)
    found = [Key("summary", f"FX_IDC:K{i}", "1h") for i in range(keys)]
    for i, key in enumerate(found):
        await storage.create_rule(FIRST_CHAT + i * chats // keys, {
            "keys": [list(key)], "condition": {"kind": "label"}}, limit=keys)
    return found


async def run(count: int, gap: float, *, burst: int = 0, chats: int = 0, nodes: int = 1,
              redis_url: str | None = None, unpaced: bool = False) -> dict[str, float]:
    keys_wanted = burst or count
    chats = chats or keys_wanted
    secret = Fernet.generate_key().decode()
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    with TelegramStandin.running(limits=bool(burst)) as telegram, \
            tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({}, data_dir=Path(tmp),
                                     database_url=f"sqlite://{tmp}/bench.sqlite3")
        async with database.open_database(settings):
            keys = await _setup(keys_wanted, chats)
            services, workers, tasks, paces = [], [], [], []
            shared: Pace = MemoryPace(chat_gap=0.0, gap=0.001) if unpaced else MemoryPace()
            for _ in range(max(1, nodes)):
                service = BotService(base_url="http://board.test",
                                     tokens=TokenAuthority([secret], 3600))
                service.bot = make_bot(TOKEN, telegram.url)
                pace = (RedisPace.from_url(redis_url, prefix) if redis_url and not unpaced
                        else shared)
                paces.append(pace)
                worker = Deliverer({"telegram": TelegramChannel(service, pace)})
                services.append(service)
                workers.append(worker)
                tasks.append(asyncio.create_task(worker.run()))

            def wake(triggers: Sequence[int]) -> None:
                """Every node's worker looks (a cluster's would hear of them on the stream)."""
                for worker in workers:
                    worker.wake()

            recorder = Recorder(on_written=wake, storm=(10**6, 1.0))
            await recorder.start()
            now = int(time.time() * 1000)
            recorder.on_published(Batch(values=[(k, data(0.0), now) for k in keys]), 1)
            published: dict[str, float] = {}
            if burst:
                started = time.monotonic()
                recorder.on_published(Batch(values=[(k, data(0.3), now + 1) for k in keys]), 1)
                published = {k.symbol.rpartition(":")[2]: started for k in keys}
            else:
                for key in keys:
                    await asyncio.sleep(gap)
                    published[key.symbol.rpartition(":")[2]] = time.monotonic()
                    recorder.on_published(Batch(values=[(key, data(0.3), now + 1)]), 1)
            received: dict[str, float] = {}
            async with asyncio.timeout(120 + keys_wanted):
                while len(received) < len(published):
                    await asyncio.sleep(0.05)
                    for call in telegram.calls_to("sendMessage"):
                        if call.status == 200:
                            for ticker in tickers(call.params["text"]):
                                received.setdefault(ticker, call.at)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await recorder.stop()
            for service in services:
                assert service.bot is not None
                await service.bot.session.close()
            for pace in {id(p): p for p in paces}.values():
                await pace.close()
            refused = len(telegram.too_many())
            messages = len([c for c in telegram.calls_to("sendMessage") if c.status == 200])
    latency = [(received[t] - published[t]) * 1000 for t in published]
    times = sorted(received.values())
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {"median_ms": statistics.median(latency), "p99_ms": nearest_rank(latency, 0.99),
            "max_ms": max(latency), "triggers": len(times), "messages": messages,
            "span_s": span, "rate": (messages - 1) / span if span else 0.0,
            "too_many": refused}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.1)
    parser.add_argument("--burst", type=int, default=0, metavar="N")
    parser.add_argument("--chats", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--redis", default=None, metavar="URL")
    parser.add_argument("--unpaced", action="store_true")
    args = parser.parse_args(argv)
    found = asyncio.run(run(args.count, args.gap, burst=args.burst, chats=args.chats,
                            nodes=args.nodes, redis_url=args.redis, unpaced=args.unpaced))
    if args.burst:
        where = "open" if args.unpaced else "in Redis" if args.redis else "in memory"
        print(f"telegram burst: {args.burst} triggers at once over {args.chats or args.burst} "
              f"chats, {args.nodes} node(s), pace {where}, "
              "the stand-in enforcing 1/s per chat and 30/s in all")
        print(f"  {found['triggers']:.0f} triggers in {found['messages']:.0f} messages (a "
              f"chat's burst is one digest) over {found['span_s']:.2f} s: "
              f"{found['rate']:.1f}/s sustained; 429s from the stand-in: "
              f"{found['too_many']:.0f} (target: 0 at ~25/s)")
        print(f"  publication -> receipt: median {found['median_ms']:.0f} ms, "
              f"max {found['max_ms']:.0f} ms")
        return
    print(f"telegram delivery: {args.count} publications, one every {args.gap:g}s, one chat "
          "each, SQLite, the stand-in without limits")
    print(f"  publication -> receipt: median {found['median_ms']:.1f} ms, "
          f"p99 {found['p99_ms']:.1f} ms, max {found['max_ms']:.1f} ms (target p99 < 1 s)")


if __name__ == "__main__":
    main()
