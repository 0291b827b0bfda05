"""How many scanner requests a tick costs, and how much it over-fetches, per planning strategy.

    python -m bench.planner [--runs 7] [--seeds 10] [--compare main=DIR]

The demands are synthetic but shaped like real use: forex, crypto and US-stock symbols, all ten
timeframes, a Zipf popularity over symbols and timeframes (a few majors and the intraday frames
take most subscriptions), both built-in profiles, and fixed seeds so runs compare:

- **clients**: 300 clients subscribing to 5 distinct keys each, half of them on ``full`` and
  half on ``summary``, over 150 symbols (Zipf exponent 1.1): about 620 keys over 140 tickers,
  the shape of issue 15's held-out mix (624 keys over 143 tickers).
- **realistic** and **large**: keys drawn one at a time, profile per key, until 1,500 (over
  ~400 symbols) and 5,000 (over ~1,250) distinct keys exist.

Target (issue 15): on every mix, ``plan`` at its defaults sends <= 0.4 times the seed
grouping's requests at an over-fetch <= 1.25, in well under 50 ms for 5,000 keys. The clients
mix is also drawn with ``--seeds`` other seeds, so the verdict does not rest on one lucky draw.

Per strategy: requests per tick and their share of the seed grouping's, cells fetched and
needed, over-fetch, rows per ticker (the pieces a ticker's row comes back in: 1.00 when every
ticker sits in one request), plan ms, and join ms: ``collector.merge_results`` joining those
pieces and every key's values picked out of the joined rows, on synthetic rows (the CPU a plan
by columns moves into the collector's tick). Both times are medians of ``--runs`` rounds, every
strategy timed once per round; with ``--compare``, the medians of the per-round ratios of
``plan`` to the other follow each table.

``--compare NAME=DIR`` also plans every mix with the ``quartsig/planner.py`` of another
checkout (e.g. ``git archive 807553f | tar -x -C /tmp/base``) at its default limits, side by
side: planner output is deterministic, so counts compare exactly, run to run.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import random
import statistics
import string
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from quartsig.domain.columns import FULL_COLUMNS
from quartsig.domain.model import Key, Layout, Row, ScanRequest, ScanResult
from quartsig.domain.symbols import screener_for
from quartsig.domain.timeframes import column
from quartsig.feed.composer import merge_results
from quartsig.upstream.planner import Limits, needed_cells, overfetch, plan, seed_grouping

PROFILES: dict[str, tuple[str, ...]] = {"full": FULL_COLUMNS, "summary": ("Recommend.All",)}

#: Timeframes from most to least watched; Zipf weights follow this order.
POPULARITY = ("1h", "15m", "5m", "4h", "1d", "1m", "30m", "2h", "1W", "1M")

CURRENCIES = (
    "USD", "EUR", "JPY", "GBP", "CHF", "AUD", "NZD", "CAD", "SEK", "NOK", "DKK", "PLN", "TRY",
    "ZAR", "MXN", "SGD", "HKD", "CNH", "HUF", "CZK",
)  # fmt: skip

#: Issue 15's target: requests at most this share of the seed grouping's ...
TARGET_RATIO = 0.4
#: ... at an over-fetch at most this.
TARGET_OVERFETCH = 1.25


@dataclass(frozen=True)
class Scenario:
    """One demand: ``keys`` distinct keys drawn one at a time, or ``clients`` x ``per``."""

    name: str
    symbols_per_market: int
    keys: int = 0
    clients: int = 0
    per: int = 5
    exponent: float = 1.0
    seed: int = 20240601


SCENARIOS = (
    Scenario("clients", 50, clients=300, exponent=1.1),
    Scenario("realistic", 150, keys=1500),
    Scenario("large", 500, keys=5000),
)


def _forex(count: int) -> list[str]:
    pairs = (a + b for a, b in itertools.permutations(CURRENCIES, 2))
    return [f"FX_IDC:{pair}" for pair in itertools.islice(pairs, count)]


def _letters(rng: random.Random, count: int, exchanges: Sequence[str], suffix: str) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choices(string.ascii_uppercase, k=rng.randint(2, 5))))
    return [f"{rng.choice(exchanges)}:{name}{suffix}" for name in sorted(names)]


def universe(rng: random.Random, per_market: int) -> list[str]:
    """Symbols in popularity order, markets interleaved at random."""
    symbols = (
        _forex(per_market)
        + _letters(rng, per_market, ("BINANCE",), "USDT")
        + _letters(rng, per_market, ("NASDAQ", "NYSE"), "")
    )
    rng.shuffle(symbols)
    return symbols


def zipf_weights(count: int, exponent: float = 1.0) -> list[float]:
    return [1 / (rank**exponent) for rank in range(1, count + 1)]


def demand(scenario: Scenario, seed: int | None = None) -> list[Key]:
    """The scenario's keys, sorted, drawn with ``seed`` (the scenario's own by default)."""
    rng = random.Random(scenario.seed if seed is None else seed)
    symbols = universe(rng, scenario.symbols_per_market)
    symbol_weights = zipf_weights(len(symbols), scenario.exponent)
    tf_weights = zipf_weights(len(POPULARITY), scenario.exponent)
    keys: set[Key] = set()
    if scenario.clients:
        for client in range(scenario.clients):
            profile = "full" if client % 2 else "summary"
            mine: set[tuple[str, str]] = set()
            while len(mine) < scenario.per:
                symbol = rng.choices(symbols, symbol_weights)[0]
                mine.add((symbol, rng.choices(POPULARITY, tf_weights)[0]))
            keys.update(Key(profile, symbol, tf) for symbol, tf in mine)
        return sorted(keys)
    for _ in range(200 * scenario.keys):  # until enough distinct keys (or the draws run out)
        symbol = rng.choices(symbols, symbol_weights)[0]
        tf = rng.choices(POPULARITY, tf_weights)[0]
        profile = "summary" if rng.random() < 0.5 else "full"
        keys.add(Key(profile, symbol, tf))
        if len(keys) == scenario.keys:
            break
    return sorted(keys)


def per_key(
    keys: Sequence[Key],
    profile_columns: Mapping[str, Sequence[str]],
    screener_of: Callable[[str], str],
) -> list[ScanRequest]:
    """The naive baseline: one request per (profile, symbol, timeframe)."""
    return [
        ScanRequest(
            screener_of(key.symbol),
            (key.symbol,),
            tuple(column(base, key.tf) for base in profile_columns[key.profile]),
        )
        for key in keys
    ]


STRATEGIES: tuple[tuple[str, Limits], ...] = (
    ("plan, defaults", Limits()),
    ("plan, request_cost=0", Limits(request_cost=0)),
    ("plan, request_cost=100", Limits(request_cost=100)),
    ("plan, request_cost=1000", Limits(request_cost=1000)),
    ("plan, request_cost=5000", Limits(request_cost=5000)),
    ("plan, request_cost=5000, max_overfetch=2", Limits(request_cost=5000, max_overfetch=2.0)),
    ("plan, max_overfetch=1.1", Limits(max_overfetch=1.1)),
    ("plan, max_overfetch=1.0, overfetch_slack=0", Limits(max_overfetch=1.0, overfetch_slack=0)),
    ("plan, max_tickers=50", Limits(max_tickers=50)),
    ("plan, max_cells=5000", Limits(max_cells=5_000)),
    ("plan, max_columns=200", Limits(max_columns=200)),
)

#: A planning function: keys -> requests.
Planner = Callable[[Sequence[Key]], list[ScanRequest]]


def variant(name: str, where: Path) -> Planner:
    """``plan`` at its default limits from another checkout's planner (``quartsig/upstream/``
    since the layer folders, ``quartsig/`` before)."""
    found = [path for path in (where / "quartsig" / "upstream" / "planner.py",
                               where / "quartsig" / "planner.py") if path.exists()]
    spec = found and importlib.util.spec_from_file_location(f"bench_planner_{name}", found[0])
    if not spec or spec.loader is None:
        raise SystemExit(f"no quartsig/upstream/planner.py or quartsig/planner.py in {where}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    other: Callable[..., list[ScanRequest]] = module.plan
    return lambda keys: other(keys, PROFILES, screener_for)


def join_ms(
    keys: Sequence[Key], columns: Mapping[tuple[str, str], tuple[str, ...]],
    requests: Sequence[ScanRequest],
) -> float:  # fmt: skip
    """Ms the collector spends joining a ticker's pieces (``merge_results``) and picking every
    key's values out of the joined rows: what a plan by columns costs it."""
    results = []
    for request in requests:
        layout = Layout(request.columns)
        rows = {ticker: Row(layout, [0.0] * len(layout.columns)) for ticker in request.tickers}
        results.append(ScanResult(request, rows, frozenset(), None, 1, 0.0))
    start = time.perf_counter()
    outcome = merge_results(results)
    for key in keys:
        outcome.rows[key.symbol].pick(columns[key.profile, key.tf])
    return (time.perf_counter() - start) * 1000


#: name, requests, cells fetched, cells needed, over-fetch, rows per ticker, plan ms, join ms
Measured = tuple[str, int, int, int, float, float, float, float]


def run(
    keys: Sequence[Key], runs: int, others: Mapping[str, Planner]
) -> tuple[list[Measured], dict[str, tuple[float, float]]]:
    """Every strategy on ``keys``, and per other planner the medians of the per-round ratios
    ``plan``/other of plan ms and join ms.

    Timings go round-robin, every strategy once per round, so a busy machine slows them alike
    and a round's ratios compare like with like."""
    planners: dict[str, Planner] = {
        "one per (profile, symbol, tf)": lambda k: per_key(k, PROFILES, screener_for),
        "seed grouping": lambda k: seed_grouping(k, PROFILES, screener_for),
    }
    for name, planner in others.items():
        planners[f"{name}: plan, defaults"] = planner
    for name, limits in STRATEGIES:
        planners[name] = lambda k, lim=limits: plan(k, PROFILES, screener_for, lim)
    columns = {
        (key.profile, key.tf): tuple(column(base, key.tf) for base in PROFILES[key.profile])
        for key in keys
    }
    plans = {name: planner(keys) for name, planner in planners.items()}
    plan_ms: dict[str, list[float]] = {name: [] for name in planners}
    joins: dict[str, list[float]] = {name: [] for name in planners}
    for _ in range(runs):
        for name, planner in planners.items():
            start = time.perf_counter()
            planner(keys)
            plan_ms[name].append((time.perf_counter() - start) * 1000)
            joins[name].append(join_ms(keys, columns, plans[name]))
    needed = needed_cells(keys, PROFILES)
    wanted = sum(map(len, needed.values()))
    rows: list[Measured] = []
    for name, requests in plans.items():
        cells = sum(request.cells for request in requests)
        # How many pieces a ticker's row comes back in: the collector joins them.
        pieces = sum(len(request.tickers) for request in requests) / max(1, len(needed))
        rows.append((
            name, len(requests), cells, wanted, overfetch(requests, needed), pieces,
            statistics.median(plan_ms[name]), statistics.median(joins[name]),
        ))  # fmt: skip
    ratios = {}
    for other in others:
        theirs = f"{other}: plan, defaults"
        ratios[other] = (_ratio(plan_ms, "plan, defaults", theirs),
                         _ratio(joins, "plan, defaults", theirs))  # fmt: skip
    return rows, ratios


def _ratio(times: Mapping[str, list[float]], ours: str, theirs: str) -> float:
    return statistics.median(a / b for a, b in zip(times[ours], times[theirs], strict=True))


def verdict(requests: int, seed: int, ratio: float) -> str:
    share = requests / seed if seed else 0.0
    met = share <= TARGET_RATIO and ratio <= TARGET_OVERFETCH
    return f"{share:.3f}x at {ratio:.3f}: {'met' if met else 'MISSED'}"


def table(scenario: Scenario, keys: Sequence[Key], rows: Sequence[Measured]) -> str:
    symbols = len({key.symbol for key in keys})
    seed = rows[1][1]
    lines = [
        f"### {scenario.name}: {len(keys)} keys, {symbols} symbols",
        "",
        "| strategy | requests/tick | vs seed | cells fetched | cells needed | over-fetch "
        "| rows/ticker | plan ms | join ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {count} | {count / seed:.3f} | {cells} | {wanted} | {ratio:.3f} "
        f"| {per:.2f} | {ms:.2f} | {join:.1f} |"
        for name, count, cells, wanted, ratio, per, ms, join in rows
    ]
    return "\n".join(lines)


def sweep(
    scenario: Scenario, seeds: Sequence[int], others: Mapping[str, Planner]
) -> tuple[str, bool]:
    """The scenario drawn with each of ``seeds``: the table, and whether ``plan`` met the
    target on every draw."""
    planners: dict[str, Planner] = {"plan": lambda k: plan(k, PROFILES, screener_for)}
    planners.update(others)
    head = " | ".join(f"{name} requests | {name} vs seed | {name} over-fetch" for name in planners)
    lines = [
        f"### {scenario.name}, {len(seeds)} seeds: `plan` at defaults"
        + "".join(f" and {name}" for name in others),
        "",
        f"| seed | keys | symbols | seed grouping | {head} |",
        "|---:|---:|---:|---:|" + "---:|" * (3 * len(planners)),
    ]
    worst: dict[str, tuple[float, float]] = {name: (0.0, 0.0) for name in planners}
    for seed in seeds:
        keys = demand(scenario, seed)
        needed = needed_cells(keys, PROFILES)
        base = len(seed_grouping(keys, PROFILES, screener_for))
        cells = []
        for name, planner in planners.items():
            requests = planner(keys)
            ratio = overfetch(requests, needed)
            cells.append(f"{len(requests)} | {len(requests) / base:.3f} | {ratio:.3f}")
            share, most = worst[name]
            worst[name] = (max(share, len(requests) / base), max(most, ratio))
        symbols = len({key.symbol for key in keys})
        lines.append(f"| {seed} | {len(keys)} | {symbols} | {base} | {' | '.join(cells)} |")
    lines.append("")
    for name, (share, most) in worst.items():
        met = share <= TARGET_RATIO and most <= TARGET_OVERFETCH
        lines.append(
            f"{name}: worst {share:.3f}x the seed's requests, worst over-fetch {most:.3f} "
            f"(target <= {TARGET_RATIO}x at <= {TARGET_OVERFETCH}): {'met' if met else 'MISSED'}"
        )
    share, most = worst["plan"]
    return "\n".join(lines), share <= TARGET_RATIO and most <= TARGET_OVERFETCH


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timing rounds (medians reported)")
    parser.add_argument("--seeds", type=int, default=10,
                        help="other seeds the clients mix is drawn with (1..N)")  # fmt: skip
    parser.add_argument("--compare", metavar="NAME=DIR", action="append", default=[],
                        help="also plan with the checkout in DIR, as NAME")  # fmt: skip
    args = parser.parse_args(argv)
    others: dict[str, Planner] = {}
    for item in args.compare:
        name, _, where = item.partition("=")
        others[name] = variant(name, Path(where).resolve())
    met = True
    for scenario in SCENARIOS:
        keys = demand(scenario)
        rows, ratios = run(keys, args.runs, others)
        print(table(scenario, keys, rows))
        print()
        for other, (plan_ratio, join_ratio) in ratios.items():
            print(f"plan, defaults / {other}: plan ms {plan_ratio:.2f}x, join ms "
                  f"{join_ratio:.2f}x (medians of per-round ratios)")  # fmt: skip
        seed_count = rows[1][1]
        for name, count, _, _, ratio, _, _, _ in rows[2:]:
            if name == "plan, defaults" or name.endswith(": plan, defaults"):
                print(f"{name}: {verdict(count, seed_count, ratio)}")
                met &= name != "plan, defaults" or (
                    count <= TARGET_RATIO * seed_count and ratio <= TARGET_OVERFETCH
                )
        print()
    clients = SCENARIOS[0]
    text, swept = sweep(clients, range(1, args.seeds + 1), others)
    print(text)
    print()
    print(f"target on every mix and seed: {'met' if met and swept else 'MISSED'}")


if __name__ == "__main__":
    main()
