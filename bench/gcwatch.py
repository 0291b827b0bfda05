"""Run a module as ``python -m`` would, with every cycle collection's pause recorded.

    python bench/gcwatch.py OUT.json MODULE [ARGS...]

``bench.fanout`` starts the server under test through this (by path, so that it works for a
``--variant`` checkout that has no such file): a ``gc.callbacks`` hook times each collection
(``time.perf_counter`` between its ``start`` and ``stop``, and the CPU time of the thread) and,
when the process exits (a graceful SIGTERM included), writes ``[[wall time at its end, seconds,
generation, CPU seconds], ...]`` to OUT.json (wall and CPU differ when the process was
descheduled, which a loaded box does). On SIGUSR2 it writes a census of the objects the cycle
collector tracks (not those frozen), by type, to OUT.census.json. The server itself is
unchanged: nothing of this is in ``quartsig``.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import runpy
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def watch(out: Path) -> list[list[float]]:
    """Record every collection from now on; written to ``out`` at exit."""
    pauses: list[list[float]] = []
    began = [0.0, 0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[:] = time.perf_counter(), time.thread_time()
        else:
            pauses.append([time.time(), time.perf_counter() - began[0], info["generation"],
                           time.thread_time() - began[1]])

    def census(_signum: int, _frame: Any) -> None:
        things = gc.get_objects()
        counts = Counter(type(thing).__qualname__ for thing in things)
        layers = Counter(f"{_layer(thing)} {type(thing).__qualname__}" for thing in things)
        out.with_suffix(".census.json").write_text(json.dumps(
            {"tracked": sum(counts.values()), "frozen": gc.get_freeze_count(),
             "types": counts.most_common(40), "layers": layers.most_common(60)}))

    gc.callbacks.append(timed)
    signal.signal(signal.SIGUSR2, census)
    atexit.register(lambda: out.write_text(json.dumps(pauses)))
    return pauses


def _layer(thing: Any) -> str:
    """The package an object comes from, where it says: a coroutine's or a task's code, a
    bound method's object, an instance's class; ``?`` for plain containers, futures, cells."""
    code = getattr(thing, "cr_code", None) or getattr(thing, "gi_code", None) \
        or getattr(thing, "ag_code", None)
    if code is None and hasattr(thing, "get_coro"):  # a task: where its coroutine is from
        coro = thing.get_coro()
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    if code is not None:
        path = code.co_filename.replace("\\", "/")
        for layer in ("quartsig", "hypercorn", "quart", "wsproto", "h11", "asyncio",
                      "uvloop", "aiohttp", "redis"):
            if f"/{layer}/" in path:
                return layer
        return "?"
    owner = getattr(thing, "__self__", None)
    module = type(owner).__module__ if owner is not None and not isinstance(
        owner, type(gc)) else getattr(thing, "__module__", None) \
        if callable(thing) else type(thing).__module__
    if not isinstance(module, str) or module == "builtins":
        return "?"
    return module.partition(".")[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/gcwatch.py",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out", type=Path, help="where the pauses go, as JSON, at exit")
    parser.add_argument("module", help="what to run, as python -m MODULE")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the module's arguments")
    found = parser.parse_args(argv)
    watch(found.out)
    sys.argv = [found.module, *found.args]
    module = found.module
    sys.path[0] = os.getcwd()  # as ``python -m`` has it (not this script's folder)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
