"""Alert evaluation: CPU per tick for many rules over many keys, a share of keys changing.

    python -m bench.alerts [--rules 100000] [--keys 20000] [--changing 0.1] [--ticks 30]

Builds ``--rules`` rules over ``--keys`` keys (half label transitions on ``rec.all``, a third of
them with a hysteresis margin on ``Recommend.All``; 45 % RSI crossings with a margin; 5 %
watchlists of 10 cards, so 145 000 (rule, key) tracks at the defaults), primes every key once,
then runs ``--ticks`` ticks in which ``--changing`` of the keys get new values (a random walk,
steps of sigma 0.03 in the rating and 2 in RSI: most stay in their band, some cross). Prints
the CPU time (``time.thread_time``) of :meth:`Evaluator.evaluate` per tick: median, p99
(nearest rank) and max, the tracks looked at and the triggers made. The target of
issue #22 is <= 20 ms per tick at the defaults.
"""

from __future__ import annotations

import argparse
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


def build(rules: int, keys: int, seed: int) -> tuple[Evaluator, list[Key]]:
    rng = random.Random(seed)
    all_keys = [Key("full", f"FX_IDC:K{i}", "1h") for i in range(keys)]
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


def run(rules: int, keys: int, changing: float, ticks: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    evaluator, all_keys = build(rules, keys, seed)
    state = {key: (rng.uniform(-1, 1), rng.uniform(0, 100)) for key in all_keys}
    now = 1_700_000_000_000
    evaluator.evaluate([(key, data(*state[key]), now) for key in all_keys])
    looked = sum(len(evaluator._by_key.get(key, ())) for key in all_keys) * changing
    cpu: list[float] = []
    fired = 0
    for _ in range(ticks):
        now += 20_000
        batch = []
        for key in rng.sample(all_keys, int(keys * changing)):
            rating, rsi = state[key]
            rating = min(1.0, max(-1.0, rating + rng.gauss(0, 0.03)))
            rsi = min(100.0, max(0.0, rsi + rng.gauss(0, 2)))
            state[key] = rating, rsi
            batch.append((key, data(rating, rsi), now))
        started = time.thread_time()
        fired += len(evaluator.evaluate(batch))
        cpu.append(time.thread_time() - started)
    cpu.sort()
    return {
        "median_ms": statistics.median(cpu) * 1000,
        "p99_ms": cpu[max(0, -(-len(cpu) * 99 // 100) - 1)] * 1000,
        "max_ms": cpu[-1] * 1000,
        "tracks_per_tick": looked,
        "triggers_per_tick": fired / ticks,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--changing", type=float, default=0.1)
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.rules, args.keys, args.changing, args.ticks, args.seed)
    print(f"alerts: {args.rules} rules over {args.keys} keys, {args.changing:.0%} changing, "
          f"{args.ticks} ticks")
    print(f"  evaluate CPU per tick: median {result['median_ms']:.2f} ms, "
          f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms (target <= 20 ms)")
    print(f"  tracks on changed keys per tick: {result['tracks_per_tick']:.0f}, "
          f"triggers per tick: {result['triggers_per_tick']:.0f}")


if __name__ == "__main__":
    main()
