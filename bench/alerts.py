"""Alert evaluation: CPU per tick for many rules over many keys, a share of keys changing.

    python -m bench.alerts [--rules 100000] [--keys 20000] [--changing 0.1] [--ticks 30]

Builds ``--rules`` rules over ``--keys`` keys (half label transitions on ``rec.all``, a third of
them with a hysteresis margin on ``Recommend.All``; 45 % RSI crossings with a margin; 5 %
watchlists of 10 cards, so 145 000 (rule, key) tracks at the defaults), primes every key once,
then runs ``--ticks`` ticks in which ``--changing`` of the keys get new values (a random walk,
steps of sigma 0.03 in the rating and 2 in RSI: most stay in their band, some cross). Prints
the CPU time (``time.thread_time``) of :meth:`Evaluator.evaluate` per tick: median, p99
(nearest rank) and max, the tracks on changed keys and the triggers made; once with each
batch's changes (what the recorder on the collector has: only tracks reading a changed
output are looked at), once without (every changed key in full, as for a batch from Redis).
The target of issue #22 is <= 20 ms per tick at the defaults.

``--delivery N`` measures instead the path a trigger takes after evaluation, end to end in one
process: N publications (one every ``--gap`` seconds), each moving one key a rule watches, go
through the recorder (fenced write of the trigger and its delivery to a SQLite file), the
delivery worker and a signed webhook POST to a local aiohttp receiver; it prints the median and
p99 (nearest rank) of publication -> receipt, for each way a worker learns what is owed, in
one run: ``wake`` (one process: the recorder wakes its worker), ``stream`` (the cluster: the
trigger ids announced on the Redis stream at ``--redis``, two workers reading it as one
consumer group) and ``poll`` (two workers that learn only from their database poll, every
``--poll`` seconds: what an announcement lost, or Redis away on a node that did not write,
costs). ``--modes`` picks some.
"""

from __future__ import annotations

import argparse
import inspect
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from quartsig.alerts.evaluation import Evaluator
from quartsig.alerts.rules import LABELS, Crossing, LabelChange, Rule, watchlist
from quartsig.domain.model import Key
from quartsig.domain.rules import label

WATCHLIST_SIZE = 10


def build(rules: int, keys: int, seed: int,
          over: Sequence[Key] | None = None) -> tuple[Evaluator, list[Key]]:
    """``rules`` rules of the mix above over ``keys`` keys (``over``'s first ones, if given:
    ``bench.tick --alerts`` puts them on the keys its ticks publish)."""
    rng = random.Random(seed)
    all_keys = (list(over[:keys]) if over is not None
                else [Key("full", f"FX_IDC:K{i}", "1h") for i in range(keys)])
    evaluator = Evaluator()
    for rule_id in range(rules):
        kind = rule_id % 20
        key = all_keys[rule_id % keys]
        if kind < 10:
            to = frozenset(rng.sample(LABELS, rng.randint(0, 2)))
            margin = 0.05 if kind % 3 == 0 else 0.0
            evaluator.add(Rule(rule_id, rule_id, (key,), LabelChange(to=to, margin=margin),
                               frequency=rng.choice(["every_time", "once_per_bar"])))
        elif kind < 19:
            evaluator.add(Rule(rule_id, rule_id, (key,),
                               Crossing("RSI", rng.choice(["above", "below"]),
                                        rng.choice([30, 70]), margin=2),
                               cooldown=rng.choice([0, 60])))
        else:
            start = rule_id % keys
            cards = [all_keys[(start + j * 997) % keys] for j in range(WATCHLIST_SIZE)]
            evaluator.add(watchlist(rule_id, rule_id, cards))
    return evaluator, all_keys


def data(rating: float, rsi: float) -> dict[str, Any]:
    return {"Recommend.All": rating, "rec.all": label(rating), "RSI": rsi}


def run(rules: int, keys: int, changing: float, ticks: int, seed: int,
        changes: bool = True) -> dict[str, float]:
    """``changes``: each tick's batch comes with its changes (the items of each key's data
    that differ from its previous, as the collector hands them to the recorder), where the
    evaluator takes them; else (or in a checkout whose evaluator takes none) every key is
    evaluated in full, as for a batch that came over Redis."""
    rng = random.Random(seed)
    evaluator, all_keys = build(rules, keys, seed)
    with_changes = changes and "changes" in inspect.signature(evaluator.evaluate).parameters
    state = {key: (rng.uniform(-1, 1), rng.uniform(0, 100)) for key in all_keys}
    now = 1_700_000_000_000
    last = {key: data(*state[key]) for key in all_keys}
    evaluator.evaluate([(key, last[key], now) for key in all_keys])
    looked = sum(len(evaluator._by_key.get(key, ())) for key in all_keys) * changing
    cpu: list[float] = []
    fired = 0
    for _ in range(ticks):
        now += 20_000
        batch = []
        moved: dict[Key, dict[str, Any]] = {}
        for key in rng.sample(all_keys, int(keys * changing)):
            rating, rsi = state[key]
            rating = min(1.0, max(-1.0, rating + rng.gauss(0, 0.03)))
            rsi = min(100.0, max(0.0, rsi + rng.gauss(0, 2)))
            state[key] = rating, rsi
            new, old = data(rating, rsi), last[key]
            last[key] = new
            batch.append((key, new, now))
            moved[key] = {name: value for name, value in new.items() if old[name] != value}
        started = time.thread_time()
        if with_changes:
            fired += len(evaluator.evaluate(batch, moved))
        else:
            fired += len(evaluator.evaluate(batch))
        cpu.append(time.thread_time() - started)
    cpu.sort()
    return {
        "median_ms": statistics.median(cpu) * 1000,
        "p99_ms": cpu[max(0, -(-len(cpu) * 99 // 100) - 1)] * 1000,
        "max_ms": cpu[-1] * 1000,
        "tracks_per_tick": looked,
        "triggers_per_tick": fired / ticks,
        "changes": float(with_changes),
    }


async def delivery(count: int, gap: float, mode: str = "wake",
                   redis_url: str = "redis://127.0.0.1:6379/0",
                   poll: float = 5.0) -> dict[str, float]:
    """Publication -> webhook receipt latency, in ms (see the module's doc)."""
    import asyncio
    import tempfile
    import uuid
    from pathlib import Path

    from aiohttp import web

    from quartsig.access import accounts, database
    from quartsig.alerts import storage
    from quartsig.alerts.delivery import Deliverer
    from quartsig.alerts.recorder import Recorder
    from quartsig.alerts.webhooks import WebhookChannel, new_secret
    from quartsig.cluster.deliveries import RedisDeliveries
    from quartsig.config import Settings
    from quartsig.domain.model import Batch

    published: dict[str, float] = {}
    received: dict[str, float] = {}
    done = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        received.setdefault(body["symbol"], time.perf_counter())
        if len(received) == count:
            done.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({}, data_dir=Path(tmp),
                                     database_url=f"sqlite://{tmp}/bench.sqlite3")
        async with database.open_database(settings):
            await accounts.add(1)
            keys = [Key("summary", f"FX_IDC:K{i}", "1h") for i in range(count)]
            for key in keys:
                await storage.create_rule(1, {"keys": [list(key)],
                                              "condition": {"kind": "label"}}, limit=count)
            await storage.add_channel(1, "webhook", url, secret=new_secret())
            channel = WebhookChannel()
            prefix = f"bench:{uuid.uuid4().hex[:8]}:"
            streams = [RedisDeliveries.from_url(redis_url, prefix, consumer=f"node{i}")
                       for i in range(2)] if mode == "stream" else []
            if mode == "wake":
                workers = [Deliverer({"webhook": channel})]
            else:  # two nodes' workers; no wake: the stream, or the poll alone
                workers = [Deliverer({"webhook": channel}, idle=poll,
                                     announcements=streams[i] if streams else None)
                           for i in range(2)]
            deliverer = workers[0]
            recorder = Recorder(on_written=None if mode == "poll" else deliverer.written)
            await recorder.start()
            tasks = [asyncio.create_task(w.run()) for w in workers]
            now = int(time.time() * 1000)
            recorder.on_published(Batch(values=[(k, data(0.0, 50.0), now) for k in keys]), 1)
            for key in keys:
                await asyncio.sleep(gap)
                published[key.symbol] = time.perf_counter()
                recorder.on_published(Batch(values=[(key, data(0.3, 50.0), now + 1)]), 1)
            async with asyncio.timeout(120):
                await done.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await recorder.stop()
            await channel.close()
            if streams:
                await streams[0].client.delete(streams[0].stream)
            for stream in streams:
                await stream.close()
    await runner.cleanup()
    latency = sorted((received[s] - published[s]) * 1000 for s in published)
    return {"median_ms": statistics.median(latency),
            "p99_ms": latency[max(0, -(-len(latency) * 99 // 100) - 1)],
            "max_ms": latency[-1]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--changing", type=float, default=0.1)
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--delivery", type=int, default=0, metavar="N")
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("--modes", default="wake,stream,poll")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--poll", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.delivery:
        import asyncio

        print(f"alerts delivery: {args.delivery} publications, one every {args.gap:g}s, "
              "SQLite, signed webhook to a local receiver")
        for mode in args.modes.split(","):
            found = asyncio.run(delivery(args.delivery, args.gap, mode, args.redis, args.poll))
            print(f"  {mode:>6}: publication -> receipt: median {found['median_ms']:.1f} ms, "
                  f"p99 {found['p99_ms']:.1f} ms, max {found['max_ms']:.1f} ms "
                  "(target p99 < 1 s)")
        return
    print(f"alerts: {args.rules} rules over {args.keys} keys, {args.changing:.0%} changing, "
          f"{args.ticks} ticks")
    for changes in (True, False):
        result = run(args.rules, args.keys, args.changing, args.ticks, args.seed, changes)
        how = "with the batch's changes" if result["changes"] else "in full (no changes)"
        print(f"  evaluate CPU per tick, {how}: median {result['median_ms']:.2f} ms, "
              f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms "
              "(target <= 20 ms)")
        if not result["changes"] and changes:
            break  # an evaluator that takes no changes: measured once
    print(f"  tracks on changed keys per tick: {result['tracks_per_tick']:.0f}, "
          f"triggers per tick: {result['triggers_per_tick']:.0f}")


if __name__ == "__main__":
    main()
