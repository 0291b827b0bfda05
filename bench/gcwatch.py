"""Run a module as ``python -m`` would, with every cycle collection's pause recorded.

    python bench/gcwatch.py OUT.json MODULE [ARGS...]

``bench.fanout`` starts the server under test through this (by path, so that it works for a
``--variant`` checkout that has no such file): a ``gc.callbacks`` hook times each collection
(``time.perf_counter`` between its ``start`` and ``stop``) and, when the process exits (a
graceful SIGTERM included), writes ``[[wall time at its end, seconds, generation], ...]`` to
OUT.json. The server itself is unchanged: nothing of this is in ``quartsig``.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any


def watch(out: Path) -> list[list[float]]:
    """Record every collection from now on; written to ``out`` at exit."""
    pauses: list[list[float]] = []
    began = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append([time.time(), time.perf_counter() - began[0], info["generation"]])

    gc.callbacks.append(timed)
    atexit.register(lambda: out.write_text(json.dumps(pauses)))
    return pauses


def main() -> None:
    out, module, *args = sys.argv[1:]
    watch(Path(out))
    sys.argv = [module, *args]
    sys.path[0] = os.getcwd()  # as ``python -m`` has it (not this script's folder)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
