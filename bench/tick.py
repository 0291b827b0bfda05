"""Tick cost: collector CPU for one tick of N tickers x 10 timeframes, split by phase.

    python -m bench.tick [--tickers 1000] [--runs 5] [--profile full] [--ticks N]
                         [--change-share 0.5,0.1] [--compare DIR] [--rounds 3]

The scanner's reply bodies come from the stand-in (so values and nulls look like
TradingView's); the network is left out, since a tick's CPU is what is measured.
Phases, each timed on its own over the same inputs, then the whole
``Collector.publish`` as the collector runs it:

- parse: JSON bodies -> rows matched by ``"s"`` (``scanner.parse_body``)
- compute: each key's profile data (``Profile.compute``)
- diff: changed keys against what each key last held (the hub's diff for the profile's
  shape, ``hub.shaped_diff``)
- encode: one update text per changed key (``protocol.data_frame``)

The whole step is measured once per ``--change-share`` (the share of keys whose inputs move
between the two ticks). ``--compare DIR`` runs the whole step of this checkout and of the
checkout in DIR (e.g. ``git worktree add /tmp/base main``) side by side: ``--rounds`` rounds,
each running this same script once per checkout in a fresh process with that checkout's
``quartsig`` first on the path, alternating, and prints medians and per-round ratios.

``--alerts RULES`` also times the alerts' work on each whole step's batch (``bench.alerts``'
mix of rules over every key, primed with the first tick's data), as the recorder does it:
its snapshot of the batch (``Recorder.on_published``, on the tick's path) and its evaluation
(``Recorder._evaluate``, in its writer task after the publication), printed beside the step and
added to it as "step + evaluation", the cost of one tick's data all told.

Each measured step starts as a server's tick does: the earlier runs' garbage collected and
what lives frozen (the server's freezer freezes every second, between 20 s ticks), so that no
full collection of the bench's own leftovers lands in a measured step.

``--ticks N`` then runs N steady-state ticks on one hub and collector (the two reply sets in
turn, so half the keys change every tick) and prints their median CPU time and the time the
cycle collector took in them, by generation: a loop to record with a profiler
(``py-spy record -- python -m bench.tick --ticks 60``). With ``--freeze`` what survived each
tick is frozen after it (``gc.collect(1)``, ``gc.freeze()``, untimed), as the server's
:class:`~quartsig.ops.freezer.Freezer` does every second between its 20 s ticks: the cost of a
tick in a server, where full collections no longer walk every key's data.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from quartsig.cluster.memory import MemoryBroker
from quartsig.demo import DemoScanner, synthetic_universe
from quartsig.domain import protocol
from quartsig.domain.model import Key, Row, ScanResult
from quartsig.domain.symbols import SCREENERS, screener_for
from quartsig.domain.timeframes import TIMEFRAMES, column
from quartsig.fanout.connection import Connection
from quartsig.fanout.handler import HubHandler
from quartsig.fanout.hub import Hub, shaped_diff
from quartsig.feed.collector import Collector
from quartsig.feed.composer import merge_results
from quartsig.plugins.loader import get_plugin_manager, load_profiles
from quartsig.upstream import scanner
from quartsig.upstream.planner import plan
from quartsig.upstream.scanner import parse_body

#: The scanner client's row cache, in checkouts that have one (``--compare`` runs older ones).
RowCache: Any = getattr(scanner, "RowCache", None)


def _median_ms(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        fn()
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times)


async def _noop(text: str) -> None:
    pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", default="full")
    parser.add_argument("--ticks", type=int, default=0,
                        help="then run this many steady-state ticks (for a profiler)")
    parser.add_argument("--freeze", action="store_true",
                        help="with --ticks: freeze what survived each tick, as the server does")
    parser.add_argument("--change-share", type=_shares, default=(0.5, 0.1),
                        help="shares of keys that change, comma-separated (default 0.5,0.1)")
    parser.add_argument("--compare", metavar="DIR", type=Path,
                        help="a checkout to measure side by side with this one")
    parser.add_argument("--rounds", type=int, default=3, help="rounds with --compare")
    parser.add_argument("--alerts", type=int, default=0, metavar="RULES",
                        help="also time the evaluation of RULES alert rules on each step's batch")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.compare is not None:
        _compare(args)
        return

    import asyncio

    asyncio.run(_run(args))


def _shares(text: str) -> tuple[float, ...]:
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not shares or not all(0 <= share <= 1 for share in shares):
        raise argparse.ArgumentTypeError("each share must be within [0, 1]")
    return shares


def _compare(args: argparse.Namespace) -> None:
    """Both checkouts' whole step, alternating rounds, each in its own fresh process."""
    here = Path(__file__).resolve().parent.parent
    trees = {"this": here, "other": args.compare.resolve()}
    if not (trees["other"] / "quartsig" / "__init__.py").is_file():
        raise SystemExit(f"--compare {args.compare}: no quartsig package there")
    shares = ",".join(str(share) for share in args.change_share)
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for number in range(args.rounds):
        for name, tree in trees.items():
            # The script file itself, so both run the same measurement; the checkout's own
            # package first on the path (ahead of an editable install of this one).
            env = {**os.environ, "PYTHONPATH": str(tree)}
            done = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--json", "--runs",
                 str(args.runs), "--tickers", str(args.tickers), "--profile", args.profile,
                 "--change-share", shares, "--alerts", str(args.alerts)],
                env=env, cwd=tree, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{name} ({tree}) failed:\n{done.stderr[-3000:]}")
            figures[name].append(json.loads(done.stdout.splitlines()[-1]))
            print(f"round {number + 1} {name}: " + ", ".join(
                f"{phase} {ms:.1f}" for phase, ms in figures[name][-1].items()), flush=True)
    print()
    print(f"{args.rounds} rounds, alternating; ms CPU per tick, medians of the rounds' medians "
          f"of {args.runs} runs; this = {trees['this']}, other = {trees['other']}")
    print()
    print("| measure | other | this | this / other (median of rounds) | per round |")
    print("|---|---:|---:|---:|---|")
    for phase in figures["this"][0]:
        mine = [round_[phase] for round_ in figures["this"]]
        theirs = [round_[phase] for round_ in figures["other"]]
        ratios = [a / b if b else float("nan") for a, b in zip(mine, theirs, strict=True)]
        print(f"| {phase} | {statistics.median(theirs):.1f} | {statistics.median(mine):.1f} | "
              f"{statistics.median(ratios):.2f} | {' '.join(f'{r:.2f}' for r in ratios)} |")


async def _run(args: argparse.Namespace) -> None:
    profiles = load_profiles(get_plugin_manager(entry_points=False))
    profile = profiles[args.profile]
    universe = synthetic_universe(n_forex=args.tickers)
    standin = DemoScanner(seed=3, universe=universe)
    standin.config.update({"change_share": 0.5})
    tickers = sorted(universe["forex"])
    keys = [Key(args.profile, ticker, tf) for ticker in tickers for tf in TIMEFRAMES]
    columns = {name: p.columns for name, p in profiles.items()}
    requests = plan(keys, columns, lambda s: screener_for(s, SCREENERS))

    def bodies_of(market: DemoScanner) -> list[bytes]:
        out = []
        for request in requests:
            payload = {
                "symbols": {"tickers": list(request.tickers)},
                "columns": list(request.columns),
            }
            status, body, _ = market.answer(request.screener, payload)
            assert status == 200, body[:200]
            out.append(body)
        return out

    def bodies() -> list[bytes]:
        return bodies_of(standin)

    # Two successive ticks' replies: the second differs from the first in about half the cells.
    first, second = bodies(), (standin.step(), bodies())[1]

    def results(raw: list[bytes], cache: Any = None) -> list[ScanResult]:
        """Rows as the scanner client parses them: through its row cache where the checkout
        has one (``scanner.RowCache``), else ``parse_body``."""
        out = []
        for request, body in zip(requests, raw, strict=True):
            parsed = parse_body(request, body) if cache is None else cache.parse(request, body)
            assert not isinstance(parsed, Exception) and isinstance(parsed, tuple)
            out.append(ScanResult(request, parsed[0], parsed[1], None, 1, 0.0))
        return out

    columns_on = {tf: tuple(column(base, tf) for base in profile.columns) for tf in TIMEFRAMES}
    merged_first = merge_results(results(first)).rows
    merged_second = merge_results(results(second)).rows

    def compute(rows: dict[str, Row]) -> list[dict[str, Any]]:
        """As the collector computes: the key's values picked from its row, then the
        profile's ``compute_values`` (or ``compute`` on a mapping, if it has none)."""
        if profile.compute_values is not None:
            by_position = profile.compute_values
            return [by_position(rows[key.symbol].pick(columns_on[key.tf])) for key in keys]
        return [profile.compute(dict(zip(profile.columns,
                                         rows[key.symbol].pick(columns_on[key.tf]),
                                         strict=True)))
                for key in keys]

    old, new = compute(merged_first), compute(merged_second)
    diff = shaped_diff(tuple(new[0]))  # as the hub diffs a profile's data
    changes = [diff(a, b) for a, b in zip(old, new, strict=True)]

    def encode() -> None:
        for key, change in zip(keys, changes, strict=True):
            if change:
                protocol.data_frame("update", key.symbol, key.tf, key.profile, change, 0)

    figures = {
        "parse": _median_ms(lambda: results(second), args.runs),
        "compute": _median_ms(lambda: compute(merged_second), args.runs),
        "diff": _median_ms(lambda: [diff(a, b) for a, b in zip(old, new, strict=True)], args.runs),
        "encode": _median_ms(encode, args.runs),
    }

    # The whole publish step, as the collector runs it, with one connection per key: from the
    # same first tick (the market is seeded) to a second one at each share of keys changing.
    evaluator = recorder = None
    if args.alerts:
        from quartsig.alerts.recorder import Recorder

        evaluator, _ = _alerts_bench().build(args.alerts, len(keys), 1, over=keys)
        recorder = Recorder()  # its writer's evaluation, called by hand (no loop, no database)
        recorder.evaluator = evaluator
        recorder.term = 0  # the term it is in step with (the composer's batches carry 0)

    def publish_once(before: list[bytes], after: list[bytes]) -> tuple[float, float, float]:
        """The step's CPU ms, and its batch's alerts snapshot's (on the tick) and
        evaluation's (in the recorder's writer) (0 without ``--alerts``)."""
        cache = RowCache() if RowCache is not None else None
        hub, collector, _ = _primed(keys, profiles, results(before, cache))
        if evaluator is not None:  # the rules' last values: the first tick's (copies: the
            # step updates data in place where it has compute_changes)
            evaluator.evaluate([(key, dict(data), 0)
                                for key, data in collector.composer.outputs.items()])
        # As in a server between ticks: the garbage of earlier runs collected (else a full
        # collection of it lands in the same measured steps every round, 100-120 ms) and what
        # lives frozen, as the freezer does every second (quartsig.ops.freezer).
        gc.collect()
        gc.freeze()
        started = time.process_time()
        batch = collector.compose(keys, results(after, cache))
        hub.apply(batch)
        step = (time.process_time() - started) * 1000
        if recorder is None:
            gc.unfreeze()
            return step, 0.0, 0.0
        started = time.process_time()
        recorder.on_published(batch, 0)
        queued = time.process_time()
        recorder._evaluate(recorder.queue.popleft()[0], {})
        done = time.process_time()
        gc.unfreeze()
        return step, (queued - started) * 1000, (done - queued) * 1000

    changed_at: dict[str, int] = {}
    for share in args.change_share:
        # Keys move one by one (the stand-in's model: the worst case for skipping whole rows).
        market = DemoScanner(seed=3, universe=universe)
        market.config.update({"change_share": share})
        before = bodies_of(market)
        market.step()
        after = bodies_of(market)
        # Whole tickers move, every timeframe at once (TradingView's: each timeframe's current
        # bar moves with the price), the others stand still to the byte.
        moving = set(random.Random(7).sample(tickers, round(share * len(tickers))))
        whole_tickers = bodies_of(_Partly(universe, moving))
        for name, replies in ((f"{share:.0%} of keys", after),
                              (f"{share:.0%} of tickers", whole_tickers)):
            hub, collector, _ = _primed(keys, profiles, results(before))
            changed_at[name] = hub.apply(collector.compose(keys, results(replies)))
            measured = [publish_once(before, replies) for _ in range(args.runs)]
            figures[f"whole step, {name} change"] = statistics.median(m[0] for m in measured)
            if evaluator is not None:
                figures[f"alerts snapshot, {name} change"] = statistics.median(
                    m[1] for m in measured)
                figures[f"evaluation, {name} change"] = statistics.median(
                    m[2] for m in measured)
                figures[f"step + evaluation, {name} change"] = statistics.median(
                    sum(m) for m in measured)
    if args.json:
        print(json.dumps(figures))
        return
    changed = sum(1 for change in changes if change)
    cells = sum(r.cells for r in requests)
    print(f"tick cost: {len(tickers)} tickers x {len(TIMEFRAMES)} timeframes = {len(keys)} keys, "
          f"profile {args.profile} ({len(profile.columns)} columns), {len(requests)} requests, "
          f"{cells} cells, {changed} keys changed in the phases; keys whose data changed in "
          f"the whole step: " + ", ".join(f"{n} at {name}" for name, n in changed_at.items())
          + f"; medians of {args.runs} runs (CPU time)")
    print()
    print("| phase | ms per tick | us per key |")
    print("|---|---|---|")
    phases = {name: ms for name, ms in figures.items()
              if not name.startswith(("whole", "alerts", "evaluation", "step + "))}
    for phase, ms in figures.items():
        print(f"| {phase} | {ms:.1f} | {ms * 1000 / len(keys):.2f} |")
    print(f"| sum of phases (parse, compute and diff all keys, encode) | "
          f"{sum(phases.values()):.1f} | {sum(phases.values()) * 1000 / len(keys):.2f} |")
    print()
    print(f"body size: {sum(map(len, second)) / 1e6:.1f} MB; "
          f"update frames: {sum(len(orjson.dumps(c)) for c in changes) / 1e6:.1f} MB of data")
    if args.ticks:
        _steady(args.ticks, keys, profiles, [results, first, second], freeze=args.freeze)


def _alerts_bench() -> Any:
    """``bench/alerts.py`` beside this file (with ``--compare`` the path leads to the other
    checkout's ``bench``, whose ``build`` may not take ``over``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_alerts",
                                                  Path(__file__).with_name("alerts.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Partly(DemoScanner):
    """The stand-in one step on for ``moving`` tickers (every key of theirs), as it was for
    the others."""

    def __init__(self, universe: Any, moving: set[str]) -> None:
        super().__init__(seed=3, universe=universe)
        self.moving = moving
        self.before = DemoScanner(seed=3, universe=universe)
        self.after = DemoScanner(seed=3, universe=universe)
        self.after.step(change_share=1.0)

    def values(self, ticker: str, timeframe: str) -> dict[str, Any]:
        market = self.after if ticker in self.moving else self.before
        return market.values(ticker, timeframe)


def _primed(keys: list[Key], profiles: Any,
            replies: Any) -> tuple[Hub, Collector, Connection]:
    """A hub with one connection subscribed to every key, and a collector that has published
    ``replies`` into it once (the connection's frame taken): the state before a tick."""
    hub = Hub(max_subscriptions=len(keys))
    collector = Collector(MemoryBroker(HubHandler(hub)), profiles, None,  # type: ignore[arg-type]
                          lambda s: "forex")
    conn = Connection(_noop)
    hub.attach(conn, 1)
    for key in keys:
        hub.subscribe(conn, key)
    hub.apply(collector.compose(keys, replies))
    conn.take()
    return hub, collector, conn


def _steady(ticks: int, keys: list[Key], profiles: Any, inputs: list[Any],
            freeze: bool = False) -> None:
    """``ticks`` ticks of one collector into one hub, the replies alternating; CPU per tick,
    and the cycle collector's share of it by generation (``gc.callbacks``)."""
    results, first, second = inputs
    cache = RowCache() if RowCache is not None else None  # as the scanner client parses
    hub, collector, conn = _primed(keys, profiles, results(first, cache))
    collected = [0.0, 0.0, 0.0]
    began = [0.0]
    inside = [False]  # only collections within a tick count

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.process_time()
        elif inside[0]:
            collected[info["generation"]] += time.process_time() - began[0]

    times = []
    gc.callbacks.append(timed)
    try:
        for tick in range(ticks):
            inside[0], started = True, time.process_time()
            hub.apply(collector.compose(keys, results(second if tick % 2 == 0 else first,
                                                      cache)))
            times.append((time.process_time() - started) * 1000)
            inside[0] = False
            conn.take()
            if freeze:
                gc.collect(1)
                gc.freeze()
    finally:
        gc.callbacks.remove(timed)
        gc.unfreeze()
    per_tick = ", ".join(f"gen{g} {ms * 1000 / ticks:.1f}" for g, ms in enumerate(collected))
    frozen = ", frozen after each" if freeze else ""
    print(f"{ticks} steady-state ticks{frozen}: median {statistics.median(times):.1f} ms CPU "
          f"a tick (min {min(times):.1f}); cycle collector, ms a tick: {per_tick} "
          "(CPU time between the collections' start and stop)")


if __name__ == "__main__":
    main()
