"""What one ``/metrics`` scrape costs, alone and merged over a tree of workers (issue #24.4).

    python -m bench.scrape [--runs 200] [--workers 2,4]

Builds a node's :class:`~quartsig.ops.metrics.Metrics` with realistic series (closes by code,
upstream outcomes, refusals, every histogram observed), then times, as medians of ``--runs``:
the exposition of one process (``generate_latest``, what a scrape cost before) and
``generate_latest`` then :func:`quartsig.ops.multiprocess.scrape` with N workers' files (write
its own, read and merge them all: what a scrape of ``workers = N`` costs now; the merge runs in
a thread, off the event loop). Prints the body size too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import generate_latest

from quartsig.ops import multiprocess
from quartsig.ops.metrics import Metrics


def populated() -> Metrics:
    metrics = Metrics()
    for code in ("1000", "1001", "1008", "4401", "4403", "4429"):
        metrics.closes.labels(code=code).inc(3)
    for outcome in ("ok", "throttled", "error", "timeout"):
        metrics.upstream.labels(outcome=outcome).inc(10)
    for task in ("collector", "changes", "lease"):
        metrics.task_failures.labels(task=task).inc()
    for value in (0.001, 0.01, 0.1, 1.0):
        metrics.fanout.observe(value)
        metrics.tick.observe(value * 10)
        metrics.stream_delay.observe(value)
    return metrics


def median_ms(action: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", default="2,4", help="comma-separated worker counts")
    args = parser.parse_args(argv)
    metrics = populated()
    alone = generate_latest(metrics.registry)
    print(f"{'scrape':<28} {'median ms':>10} {'bytes':>8}")
    took = median_ms(lambda: generate_latest(metrics.registry), args.runs)
    print(f"{'one process':<28} {took:>10.3f} {len(alone):>8}")
    for count in (int(n) for n in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            directory = Path(folder)
            for _ in range(count - 1):
                multiprocess.write(generate_latest(populated().registry),
                                   directory / multiprocess.file_name())
            own = directory / multiprocess.file_name()
            body = multiprocess.scrape(generate_latest(metrics.registry), directory, own)
            took = median_ms(lambda d=directory, o=own: multiprocess.scrape(  # type: ignore[misc]
                generate_latest(metrics.registry), d, o), args.runs)
        print(f"{f'{count} workers, merged':<28} {took:>10.3f} {len(body):>8}")


if __name__ == "__main__":
    main()
