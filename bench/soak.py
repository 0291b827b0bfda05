"""Long soaks, run by hand: the hardening scenarios of the suite at full size.

    python -m bench.soak slow --clients 1000 --rounds 5   # 1 stalled among 1 000: p99 before/during
    python -m bench.soak flood --seconds 60 [--rate 3000]   # connect/disconnect flood
    python -m bench.soak faults --ticks 10000     # faulted collector ticks: tasks and fds

Each prints one FIGURES line (the shape the suite prints) for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any


def _stack() -> Any:
    from tests.support.hardening import server_stack

    return server_stack(Path(tempfile.mkdtemp(prefix="quartsig-soak-")),
                        standin_args=("--step-every", "0.25", "--change-share", "1.0"),
                        QUARTSIG_INTERVAL="0.5", QUARTSIG_SEND_TIMEOUT="1")


class _Caplog:
    records: list[Any] = []

    def set_level(self, level: str) -> None:
        logging.getLogger().setLevel(level)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    sub = parser.add_subparsers(dest="what", required=True)
    slow = sub.add_parser("slow")
    slow.add_argument("--clients", type=int, default=1000)
    slow.add_argument("--rounds", type=int, default=5, help="reading+stalled window pairs")
    flood = sub.add_parser("flood")
    flood.add_argument("--seconds", type=float, default=60.0)
    flood.add_argument("--processes", type=int, default=2, help="flood client processes")
    flood.add_argument("--rate", type=float, help="open loop: connections offered per second")
    sub.add_parser("faults").add_argument("--ticks", type=int, default=10_000)
    args = parser.parse_args()
    if args.what == "faults":
        from tests import test_faults as faults

        faults.LEAK_TICKS = args.ticks
        asyncio.run(faults.test_a_thousand_faulted_ticks_leak_no_task_and_no_socket(_Caplog()))
        return
    from tests import test_hardening as load

    load.SLOW_CLIENTS = getattr(args, "clients", load.SLOW_CLIENTS)
    load.SLOW_ROUNDS = getattr(args, "rounds", load.SLOW_ROUNDS)
    load.FLOOD_SECONDS = getattr(args, "seconds", load.FLOOD_SECONDS)
    load.FLOOD_PROCESSES = getattr(args, "processes", load.FLOOD_PROCESSES)
    load.FLOOD_RATE = getattr(args, "rate", load.FLOOD_RATE)
    with _stack() as stack:
        if args.what == "slow":
            scenario = load.test_a_stalled_client_does_not_slow_the_others_and_is_closed_1013
        else:
            scenario = load.test_connect_disconnect_flood_leaves_tasks_and_memory_at_baseline
        asyncio.run(scenario(stack))


if __name__ == "__main__":
    main()
