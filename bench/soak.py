"""Long soaks, run by hand: the hardening scenarios of the suite at full size.

    python -m bench.soak slow --clients 1000 --rounds 5   # 1 stalled among 1 000: p99 before/during
    python -m bench.soak flood --seconds 60 [--rate 3000]   # connect/disconnect flood
    python -m bench.soak faults --ticks 10000     # faulted collector ticks: tasks and fds

Each runs the suite's own test (its fixtures, captured logs and assertions) through pytest,
with the sizes given here (``--soak``, see tests/support/soak.py), and prints its FIGURES
line for docs/reliability.md. They need the test extra (pytest), unlike the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = {
    "slow": "tests/test_hardening.py::"
    "test_a_stalled_client_does_not_slow_the_others_and_is_closed_1013",
    "flood": "tests/test_hardening.py::"
    "test_connect_disconnect_flood_leaves_tasks_and_memory_at_baseline",
    "faults": "tests/test_faults.py::test_a_thousand_faulted_ticks_leak_no_task_and_no_socket",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    sub = parser.add_subparsers(dest="what", required=True)
    slow = sub.add_parser("slow")
    slow.add_argument("--clients", type=int, default=1000, dest="slow_clients")
    slow.add_argument("--rounds", type=int, default=5, dest="slow_rounds",
                      help="reading+stalled window pairs")
    flood = sub.add_parser("flood")
    flood.add_argument("--seconds", type=float, default=60.0, dest="flood_seconds")
    flood.add_argument("--connections", type=int, dest="flood_connections",
                       help="stop each process after this many (default: flood for --seconds)")
    flood.add_argument("--processes", type=int, default=2, dest="flood_processes",
                       help="flood client processes")
    flood.add_argument("--rate", type=float, dest="flood_rate",
                       help="open loop: connections offered per second")
    sub.add_parser("faults").add_argument("--ticks", type=int, default=10_000, dest="leak_ticks")
    args = vars(parser.parse_args(argv))
    test = TESTS[args.pop("what")]
    try:  # only here: the other benchmarks run with the bench extra alone
        import pytest
    except ImportError:
        parser.error("the soaks run the suite's own tests: pip install -e '.[test]'")
    return int(pytest.main([
        str(REPO / test), "-q", "-s", "-p", "no:cacheprovider", "--timeout", "0",
        "--rootdir", str(REPO), "--soak", json.dumps(args),
    ]))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
