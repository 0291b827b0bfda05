"""How many scanner requests a tick costs, and how much it over-fetches, per planning strategy.

Run ``python -m bench.planner`` (or ``python bench/planner.py``). The demand is synthetic but
shaped like real use: a few hundred forex, crypto and US-stock symbols, all ten timeframes, a
Zipf popularity over symbols and timeframes (a few majors and the intraday frames take most
subscriptions), both built-in profiles, and a fixed seed so runs compare.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from quartsig.columns import FULL_COLUMNS
from quartsig.model import Key, ScanRequest
from quartsig.planner import (
    Limits,
    needed_cells,
    overfetch,
    plan,
    seed_grouping,
)
from quartsig.symbols import screener_for
from quartsig.timeframes import column

PROFILES: dict[str, tuple[str, ...]] = {"full": FULL_COLUMNS, "summary": ("Recommend.All",)}

#: Timeframes from most to least watched; Zipf weights follow this order.
POPULARITY = ("1h", "15m", "5m", "4h", "1d", "1m", "30m", "2h", "1W", "1M")

CURRENCIES = (
    "USD", "EUR", "JPY", "GBP", "CHF", "AUD", "NZD", "CAD", "SEK", "NOK", "DKK", "PLN", "TRY",
    "ZAR", "MXN", "SGD", "HKD", "CNH", "HUF", "CZK",
)  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    name: str
    symbols_per_market: int
    keys: int


SCENARIOS = (Scenario("realistic", 150, 1500), Scenario("large", 500, 5000))


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


def demand(scenario: Scenario, seed: int = 20240601) -> list[Key]:
    """Subscriptions drawn until ``scenario.keys`` distinct keys exist (or the draws run out)."""
    rng = random.Random(seed)
    symbols = universe(rng, scenario.symbols_per_market)
    symbol_weights = zipf_weights(len(symbols))
    tf_weights = zipf_weights(len(POPULARITY))
    keys: set[Key] = set()
    for _ in range(200 * scenario.keys):
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


def timed(function: Callable[[], list[ScanRequest]], runs: int) -> tuple[list[ScanRequest], float]:
    """The result and the median wall time in milliseconds."""
    times = []
    result: list[ScanRequest] = []
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        times.append((time.perf_counter() - start) * 1000)
    return result, statistics.median(times)


STRATEGIES: tuple[tuple[str, Limits | None], ...] = (
    ("plan, defaults", Limits()),
    ("plan, request_cost=0", Limits(request_cost=0)),
    ("plan, request_cost=100", Limits(request_cost=100)),
    ("plan, request_cost=1000", Limits(request_cost=1000)),
    ("plan, request_cost=5000", Limits(request_cost=5000)),
    ("plan, max_tickers=50", Limits(max_tickers=50)),
    ("plan, max_cells=5000", Limits(max_cells=5_000)),
    ("plan, max_columns=200", Limits(max_columns=200)),
)


def run(scenario: Scenario, runs: int) -> list[tuple[str, int, int, int, float, float]]:
    keys = demand(scenario)
    needed = needed_cells(keys, PROFILES)
    wanted = sum(map(len, needed.values()))
    rows = []

    def row(name: str, requests: list[ScanRequest], ms: float) -> None:
        cells = sum(request.cells for request in requests)
        rows.append((name, len(requests), cells, wanted, overfetch(requests, needed), ms))

    row(
        "one per (profile, symbol, tf)", *timed(lambda: per_key(keys, PROFILES, screener_for), runs)
    )
    row("seed grouping", *timed(lambda: seed_grouping(keys, PROFILES, screener_for), runs))
    for name, limits in STRATEGIES:
        requests, ms = timed(lambda lim=limits: plan(keys, PROFILES, screener_for, lim), runs)
        row(name, requests, ms)
    return rows


def table(scenario: Scenario, rows: Sequence[tuple[str, int, int, int, float, float]]) -> str:
    symbols = len({key.symbol for key in demand(scenario)})
    lines = [
        f"### {scenario.name}: {scenario.keys} keys, {symbols} symbols",
        "",
        "| strategy | requests/tick | cells fetched | cells needed | over-fetch | plan ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {count} | {cells} | {wanted} | {ratio:.3f} | {ms:.2f} |"
        for name, count, cells, wanted, ratio, ms in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timing runs (median reported)")
    args = parser.parse_args(argv)
    for scenario in SCENARIOS:
        print(table(scenario, run(scenario, args.runs)))
        print()


if __name__ == "__main__":
    main()
