"""Memory: server RSS per idle connection, clients offering permessage-deflate or not.

    python -m bench.memory [--clients 5000] [--rounds 1]

A shortcut for :mod:`bench.fanout` with one tick per run, both client modes and every
server: read the ``KiB/conn idle`` (RSS growth from before the connections to when all
are connected, subscribed and have their snapshots, divided by their number) and
``KiB/conn after ticks`` (after a fan-out, when lazily allocated zlib state exists)
columns. Target (issue 15): at most 40 KiB per idle browser-like connection to
``quartsig serve``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench import fanout


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="5000")
    parser.add_argument("--rounds", type=int, default=1)
    args, rest = parser.parse_known_args(argv)
    fanout.main([
        "--clients", args.clients, "--rounds", str(args.rounds), "--ticks", "1",
        "--modes", "browser,plain", "--servers", "quartsig,quart,quart-deflate,websockets",
        "--plain-servers", "quartsig,quart,websockets", *rest,
    ])  # fmt: skip


if __name__ == "__main__":
    main()
