"""One scrape sees the whole process tree: the metrics of ``workers = N`` merged (issue #24.4).

Workers share one port (``SO_REUSEPORT``), so a scrape lands on any one of them; alone, its
``/metrics`` showed that worker's share (connections read 0, 0, 2, 0, 0, 2). Each worker
writes its exposition into a directory made for the run (:func:`write`, every
:data:`EVERY` seconds and on each scrape); the worker that is scraped merges every live
worker's file (:func:`merge`). prometheus_client's own multiprocess mode was not used: it
drops the gauges read at scrape time (``set_function``) and custom collectors, which is how
quartsig keeps the hot path free of metric locks.

Series of the same name and labels are added up, except those where a sum means nothing:
a lease, a term, a data age or a readiness is the worst (or best) of the workers.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

#: Seconds between two writes of a worker's file: how stale another worker's share may be.
EVERY = 2.0
SUFFIX = ".prom"

#: How series that must not be added up combine across workers.
_MAX = frozenset({"quartsig_lease_held", "quartsig_term", "quartsig_data_age_seconds",
                  "quartsig_build_info", "python_info", "process_max_fds"})
_MIN = frozenset({"quartsig_ready", "quartsig_upstream_up", "quartsig_redis_up",
                  "process_start_time_seconds"})


def file_name(pid: int | None = None) -> str:
    """A worker's file: its pid (to tell a dead worker's file) and a random part."""
    return f"{pid or os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"


def write(body: bytes, path: Path) -> None:
    """Write an exposition (``generate_latest``) to ``path`` atomically (readers never see
    half). Only this and :func:`scrape` may run off the event loop: the exposition itself
    reads the state's gauges, which only the loop may touch."""
    partial = path.with_suffix(".tmp")
    partial.write_bytes(body)
    partial.replace(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_files(directory: Path) -> list[Path]:
    """The files of workers still running; a dead worker's file is removed."""
    found = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        pid = path.name.partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        found.append(path)
    return found


def _combine(family: str, sample: str, values: list[float]) -> float:
    if family in _MAX:
        return max(values)
    if family in _MIN or sample.endswith("_created"):
        return min(values)
    return sum(values)


def merge(texts: Iterable[str]) -> bytes:
    """The expositions ``texts`` as one: same series combined (summed unless said above)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                values[family.name].setdefault(key, []).append(sample.value)

    class Merged(Collector):
        def collect(self) -> Iterator[Metric]:
            for name, family in families.items():
                for (sample, labels), found in values[name].items():
                    family.add_sample(sample, dict(labels), _combine(name, sample, found))
                yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())
    return generate_latest(registry)


def scrape(body: bytes, directory: Path, own: Path) -> bytes:
    """This worker's exposition ``body``, fresh, merged with every live worker's last file."""
    write(body, own)
    texts = []
    for path in live_files(directory):
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    return merge(texts)
