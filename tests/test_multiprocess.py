"""One scrape sees the whole process tree (``workers = 2``), issue #24.4."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quartsig.ops import multiprocess
from quartsig.ops.metrics import Metrics
from tests.support.net import free_port, http
from tests.support.processes import QuartsigServer, Standin, quartsig_cli, quartsig_env
from tests.support.redisdb import redis_up


def _values(text: bytes | str) -> dict[str, float]:
    text = text.decode() if isinstance(text, bytes) else text
    return {sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items())):
            sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _worker(connections: float, lease: float, ready: float, failures: int) -> str:
    registry = CollectorRegistry()
    Gauge("quartsig_connections", "c", registry=registry).set(connections)
    Gauge("quartsig_lease_held", "l", registry=registry).set(lease)
    Gauge("quartsig_ready", "r", registry=registry).set(ready)
    Counter("quartsig_task_failures", "f", ["task"], registry=registry).labels(
        task="changes").inc(failures)
    return generate_latest(registry).decode()


def test_merge_adds_up_counts_and_takes_the_worst_or_best_where_a_sum_means_nothing() -> None:
    merged = _values(multiprocess.merge([_worker(2, 1, 1, 1), _worker(3, 0, 0, 2)]))
    assert merged["quartsig_connections"] == 5
    assert merged["quartsig_task_failures_total,task=changes"] == 3
    assert merged["quartsig_lease_held"] == 1  # one worker leads: the tree leads
    assert merged["quartsig_ready"] == 0  # one worker cannot serve: the tree is not ready


def test_a_scrape_merges_every_live_workers_file_and_drops_a_dead_ones(tmp_path: Path) -> None:
    first, second = Metrics(), Metrics()
    first.connections.set_function(lambda: 2)
    second.connections.set_function(lambda: 3)
    multiprocess.write(generate_latest(second.registry), tmp_path / multiprocess.file_name())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    gone = tmp_path / multiprocess.file_name(int(dead.stdout))
    multiprocess.write(generate_latest(second.registry), gone)
    own = tmp_path / multiprocess.file_name()
    merged = _values(multiprocess.scrape(generate_latest(first.registry), tmp_path, own))
    assert merged["quartsig_connections"] == 5  # not 8: the dead worker's share is gone
    assert not gone.exists() and own.exists()


@pytest.mark.e2e
async def test_with_two_workers_every_scrape_sees_every_connection(tmp_path: Path) -> None:
    if not await redis_up():
        pytest.skip("needs the Redis at 127.0.0.1:6379")
    config = tmp_path / "hypercorn.toml"
    config.write_text('workers = 2\nworker_class = "asyncio"\ngraceful_timeout = 5\n')
    with Standin.start(tmp_path) as standin:
        env = quartsig_env(tmp_path / "data", standin.url,
                           QUARTSIG_REDIS_URL="redis://127.0.0.1:6379/0",
                           QUARTSIG_REDIS_PREFIX=f"test:{uuid.uuid4().hex[:8]}:")
        quartsig_cli(env, "account", "add", "42")
        token = quartsig_cli(env, "token", "issue", "42").strip()
        with QuartsigServer.start(env, tmp_path, "--config", str(config),
                                  port=free_port()) as node:
            async with aiohttp.ClientSession() as session:
                sockets = []
                for _ in range(6):  # the kernel spreads them over both workers
                    ws = await session.ws_connect(
                        node.url.replace("http", "ws") + f"/ws?token={token}", heartbeat=None)
                    sockets.append(ws)
                seen = []
                for _ in range(30):
                    status, body = await asyncio.to_thread(http, "GET", f"{node.url}/metrics")
                    assert status == 200
                    seen.append(_values(body)["quartsig_connections"])
                    if len(seen) >= 8 and seen[-8:] == [6.0] * 8:
                        break
                    await asyncio.sleep(multiprocess.EVERY / 2)
                # Every scrape after the first sharing round counts all six, on either worker.
                assert seen[-8:] == [6.0] * 8, seen
                for ws in sockets:
                    await ws.close()
