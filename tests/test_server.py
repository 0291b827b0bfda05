"""Start-up is all or nothing: a node that cannot listen never joins its cluster (issue #24.1).

Real processes: a private ``redis-server``, the stand-in scanner and ``quartsig serve`` nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypercorn.config import Config

from quartsig.server import StartError, freeze_start_up, listen
from tests.support.net import eventually, free_port, http, wait_until
from tests.support.processes import (
    REPO,
    QuartsigServer,
    Standin,
    quartsig_cli,
    quartsig_env,
    stop_process,
)

WAIT = 60.0  # generous: a busy 2-core machine runs several Python processes here
SYMBOL, TF = "FX_IDC:EURUSD", "1h"


# Hypercorn leaves its unbound socket to the garbage collector; the process exits anyway.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_listen_names_the_taken_address_in_one_line() -> None:
    with contextlib.closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = Config()
        config.bind = [f"127.0.0.1:{taken.getsockname()[1]}"]
        with pytest.raises(StartError, match=r"^cannot listen on 127\.0\.0\.1:\d+: "
                                             r"Address already in use$"):
            listen(config)


@contextlib.contextmanager
def redis_server(log: Path) -> Iterator[str]:
    """A private ``redis-server`` (its URL), so the cluster's keys are the test's alone."""
    port = free_port()
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"], stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                          capture_output=True, text=True,
                                          check=False).stdout.strip() == "PONG",
                   10, what="redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(5)


def role(node: QuartsigServer) -> Any:
    _, body = http("GET", f"{node.url}/healthz", timeout=2)
    return json.loads(body).get("role") if body else None


async def latest_value(ws: aiohttp.ClientWebSocketResponse, wanted: float) -> bool:
    """Read frames until one carries ``wanted`` for the key (the caller bounds the wait)."""
    async for message in ws:
        frames = json.loads(message.data)
        for frame in frames if isinstance(frames, list) else [frames]:
            if frame.get("type") in ("snapshot", "update") and \
                    frame.get("data", {}).get("Recommend.All") == wanted:
                return True
    return False


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_a_node_on_a_taken_port_exits_2_and_the_cluster_keeps_publishing(
        tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis.log") as redis_url, Standin.start(tmp_path) as standin:
        env = quartsig_env(tmp_path / "data", standin.url, QUARTSIG_REDIS_URL=redis_url,
                           QUARTSIG_LEASE_TTL="1.5")
        quartsig_cli(env, "account", "add", "42")
        token = quartsig_cli(env, "token", "issue", "42").strip()
        nodes = [QuartsigServer(env, free_port(), tmp_path / f"node{n}.log") for n in (1, 2)]
        try:
            for node in nodes:
                await asyncio.to_thread(node.launch)
            leader = await eventually(
                lambda: asyncio.to_thread(
                    lambda: next((n for n in nodes if role(n) == "leader"), None)),
                WAIT, what="a leader")
            survivor = nodes[1] if leader is nodes[0] else nodes[0]

            # The deploy's mistake: a third node on a port the leader still holds.
            started = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "quartsig", "serve", "--bind", f"127.0.0.1:{leader.port}"],
                env=env, cwd=REPO, capture_output=True, text=True, timeout=WAIT, check=False)
            assert started.returncode == 2, started.stderr
            assert started.stderr.strip().splitlines()[-1] == (
                f"quartsig: cannot listen on 127.0.0.1:{leader.port}: Address already in use")
            assert "Traceback" not in started.stderr
            assert "joining the cluster" not in started.stderr  # it never joined ...
            assert "leading the cluster" not in started.stderr  # ... nor campaigned

            # The leader leaves; the survivor, not a zombie, leads and clients get data.
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(
                    survivor.url.replace("http", "ws") + f"/ws?token={token}", heartbeat=None)
                await ws.send_str(json.dumps({"op": "subscribe", "symbol": SYMBOL, "tf": TF,
                                              "profile": "summary"}))
                await asyncio.to_thread(stop_process, leader.process)  # type: ignore[arg-type]
                await asyncio.to_thread(standin.set_values, SYMBOL, TF, {"Recommend.All": 0.25})
                async with asyncio.timeout(WAIT):
                    assert await latest_value(ws, 0.25)
                await ws.close()
            assert role(survivor) == "leader"
        finally:
            for node in nodes:
                node.stop()


HANGING = '''
import asyncio, sys
from hypercorn.config import Config
from quartsig import server
from quartsig.app import create_app

class Hangs:
    """Stops never, as a task that swallows its cancellation would."""
    name = "hangs"
    async def start(self, state): pass
    async def stop(self, state):
        print("stopping, forever", flush=True)
        await asyncio.Event().wait()

config = Config()
config.bind = [sys.argv[1]]
server.run(create_app(components=[Hangs()]), config)
'''


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_ends_a_process_whose_shutdown_hangs(
        tmp_path: Path, signum: signal.Signals) -> None:
    port = free_port()
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9")
    process = subprocess.Popen([sys.executable, "-c", HANGING, f"127.0.0.1:{port}"],
                               env=env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: http("GET", f"http://127.0.0.1:{port}/livez", timeout=1)[0] == 200,
                   WAIT, what="/livez")
        process.send_signal(signum)
        assert process.stdout is not None
        for line in process.stdout:  # until the shutdown hangs
            if "stopping, forever" in line:
                break
        process.send_signal(signum)
        assert process.wait(WAIT) == -signum  # ended by the signal, not by a timeout
    finally:
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()


def test_the_start_up_is_frozen_without_its_garbage() -> None:
    """What start-up left alive is out of the full collections' way; a cycle that was garbage
    by then is freed first, not frozen for ever."""
    import gc
    import weakref

    class Cycle:
        me: Any = None

    garbage = Cycle()
    garbage.me = garbage
    gone = weakref.ref(garbage)
    del garbage
    try:
        freeze_start_up()
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # the rest of the suite is not a server
