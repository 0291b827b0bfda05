"""Upstream, proxy and database faults against a real ``quartsig serve`` with connected clients.

Every scenario checks what issue 7 asks: the collector keeps its period and honours back-off,
clients get ``degraded``/``down`` and keep their last data (no data frame while the upstream
fails), and one tick after the fault clears they have status ``ok`` and data equal to the
stand-in's current values: nothing lost. Figures go to ``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import Client
from tests.support.processes import quartsig_cli
from tests.support.stack import Stack, server_stack
from tests.support.standin import Standin as StandinState

INTERVAL = 0.5
TIMEOUT = 0.25
FAULT_WINDOW = 2.5

SUMMARY = ("FX_IDC:EURUSD", "1h", "summary")
FULL = ("FX_IDC:USDJPY", "5m", "full")

UNKNOWN_COLUMN = json.dumps({"totalCount": 0, "error": 'Unknown field "RSI|5"', "data": None})

#: Faults that mean "this address is throttled or blocked": the collector backs off across ticks.
THROTTLING = {"429-storm", "429-retry-after", "200-empty", "403", "503"}

FAULTS: dict[str, dict[str, Any]] = {
    "429-storm": {"kind": "status", "status": 429},
    "429-retry-after": {"kind": "status", "status": 429, "retry_after": 2},
    "200-empty": {"kind": "empty"},
    "200-non-json": {"kind": "garbage"},
    "403": {"kind": "status", "status": 403},
    "500": {"kind": "status", "status": 500},
    "503": {"kind": "status", "status": 503, "retry_after": 1},
    "slower-than-timeout": {"kind": "delay", "seconds": 2.0},
    "connection-reset": {"kind": "reset"},
}
# A 400 for an unknown column is not an upstream fault any more: the column is quarantined and
# charged to its profile, while everyone else's keys keep flowing (tests/test_plugin_failures.py).
# (A stand-in that refuses *every* request that way has no honest meaning to recover from.)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with server_stack(
        tmp_path_factory.mktemp("faults"),
        QUARTSIG_INTERVAL=str(INTERVAL),
        QUARTSIG_SCANNER_TIMEOUT=str(TIMEOUT),
    ) as running:
        yield running


def expected_summary(step: int, ticker: str, tf: str) -> float:
    """What the stand-in subprocess (seed 0, change share 0.3) holds at ``step``."""
    state = StandinState(seed=0)
    state.step(step) if step else None
    return float(state.values(ticker, tf)["Recommend.All"])


async def standin_requests(stack: Stack, since: float) -> list[dict[str, Any]]:
    return [r for r in await asyncio.to_thread(stack.stand.requests) if r["time"] >= since]


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(FAULTS))
async def test_upstream_fault_then_recovery(stack: Stack, name: str) -> None:
    client = await Client(stack.ws_url, stack.token).connect()
    try:
        await client.subscribe(*FULL)
        await client.subscribe(*SUMMARY)
        for key in (FULL, SUMMARY):
            await client.wait_for(lambda m, k=key: m["type"] == "snapshot"
                                  and (m["symbol"], m["tf"], m["profile"]) == k)
        await client.wait_for(lambda m: m["type"] == "status" and m["upstream"] == "ok"
                              ) if any(m["type"] == "status" for _, m in client.messages) else None

        # steady state: requests per tick without faults
        ticks0, wall0 = await stack.metric("quartsig_tick_seconds_count"), time.time()
        await asyncio.sleep(1.5)
        ticks1 = await stack.metric("quartsig_tick_seconds_count")
        per_tick = len(await standin_requests(stack, wall0)) / max(1.0, ticks1 - ticks0)

        # the fault, sticky, and values that move meanwhile (no client may see them yet)
        fault = {**FAULTS[name], "sticky": True}
        await asyncio.to_thread(stack.stand.add_faults, fault)
        fault_wall, seen = time.time(), len(client.messages)
        step = await asyncio.to_thread(stack.stand.step)
        status = await client.wait_for(lambda m: m["type"] == "status", since=seen, within=5)
        assert status["upstream"] in ("degraded", "down"), status
        await asyncio.sleep(max(0.0, FAULT_WINDOW - (time.time() - fault_wall)))
        ticks2 = await stack.metric("quartsig_tick_seconds_count")
        await asyncio.to_thread(stack.stand.clear_faults)
        cleared, cleared_wall = time.monotonic(), time.time()
        during = [m for t, m in client.messages[seen:] if t < cleared]
        assert not [m for m in during if m["type"] in ("snapshot", "update")], during
        assert client.close_code is None

        ticks_in_fault = ticks2 - ticks1
        faulted = [r for r in await standin_requests(stack, fault_wall) if r["time"] < cleared_wall]
        assert faulted, "no request reached the stand-in during the fault"
        ratio = len(faulted) / max(1.0, ticks_in_fault)
        statuses = [m for m in during if m["type"] == "status"]
        if name in THROTTLING:
            # issue 14, finding 11: a throttled address gets quieter. The collector backs off
            # across ticks (one probe per step) and each status about it says when the next try
            # is. (On a busy machine a request may also time out first, at 0.25 s: a status
            # about that alone is no throttling, and says nothing of a next try.)
            throttled = [m for m in statuses
                         if "throttled" in m["reason"] or "blocked" in m["reason"]]
            assert throttled and all("retry_at" in m for m in throttled), statuses
            assert len(faulted) <= 4 * per_tick + 4, (len(faulted), per_tick)
            next_try = throttled[-1]["retry_at"] / 1000 - cleared_wall
        else:
            # the collector kept its period: one tick per interval, give or take one
            assert ticks_in_fault >= FAULT_WINDOW / INTERVAL - 2, ticks_in_fault
            next_try = 0.0
        # retries are bounded (3 at most per request) and spaced by back-off
        assert ratio <= per_tick * 4, (ratio, per_tick)
        retry_after = float(FAULTS[name].get("retry_after") or 0)
        gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(faulted)]
        if retry_after:
            # Retry-After is honoured across ticks too: never asked again sooner
            assert min(gaps) >= retry_after - 0.05, gaps

        # one tick after the fault clears: ok, and fresh data equal to the stand-in's
        ok = await client.wait_for(lambda m: m["type"] == "status" and m["upstream"] == "ok",
                                   since=seen, within=max(0.0, next_try) + 3 * INTERVAL + 1)
        recovered = time.monotonic() - cleared
        want = expected_summary(step, *SUMMARY[:2])
        deadline = time.monotonic() + 3
        while client.state()[SUMMARY]["Recommend.All"] != want and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        fresh = time.monotonic() - cleared
        assert client.state()[SUMMARY]["Recommend.All"] == want
        assert fresh <= max(2 * INTERVAL, retry_after, next_try + INTERVAL) + TIMEOUT + 0.5, fresh
        print(f"\nFIGURES {name}: status={status['upstream']} reason={status['reason']!r} "
              f"ticks={ticks_in_fault:.0f} requests={len(faulted)} per_tick={per_tick:.2f} "
              f"min_gap={min(gaps, default=0):.2f}s "
              f"ok_after={recovered:.2f}s fresh_after={fresh:.2f}s ok={ok['reason']!r}")
    finally:
        await client.close()


# ------------------------------------------------------------------ in-process: leaks, proxies


class Sink:
    """A connection stand-in for the hub: records what it is handed."""

    def __init__(self) -> None:
        self.pieces = 0
        self.texts: list[str] = []

    def deliver(self, key: Any, piece: Any) -> None:
        self.pieces += 1

    def discard(self, key: Any) -> None:
        pass

    def send(self, text: str) -> None:
        self.texts.append(text)


def collector_for(url: str, **client_options: Any) -> tuple[Any, Any, Sink]:
    from functools import partial

    from quartsig.cluster.memory import MemoryBroker
    from quartsig.domain.model import Key
    from quartsig.domain.symbols import screener_for
    from quartsig.fanout.handler import HubHandler
    from quartsig.fanout.hub import Hub
    from quartsig.feed.collector import Collector, CollectorSettings
    from quartsig.plugins.loader import get_plugin_manager, load_profiles
    from quartsig.upstream.scanner import ScannerClient

    hub = Hub()
    client = ScannerClient(url, **client_options)
    collector = Collector(MemoryBroker(HubHandler(hub)), load_profiles(get_plugin_manager(None)),
                          client,
                          partial(screener_for), CollectorSettings(interval=1.0))
    sink = Sink()
    hub.attach(sink, 42)
    for symbol, tf, profile in [("FX_IDC:EURUSD", "1h", "summary"), ("FX_IDC:USDJPY", "5m", "full"),
                                ("BINANCE:BTCUSDT", "1d", "full")]:
        hub.subscribe(sink, Key(profile, symbol, tf))
    return collector, client, sink


LEAK_FAULTS: list[dict[str, Any]] = [
    {"kind": "status", "status": 429},
    {"kind": "status", "status": 429, "retry_after": 0.01},
    {"kind": "status", "status": 403},
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 503},
    {"kind": "empty"},
    {"kind": "garbage"},
    {"kind": "reset"},
    {"kind": "delay", "seconds": 0.2},
    {"kind": "status", "status": 400, "body": UNKNOWN_COLUMN},
]


async def test_a_thousand_faulted_ticks_leak_no_task_and_no_socket(caplog, sizes) -> None:
    """``sizes.leak_ticks`` ticks, each under another fault: no task or socket is left behind,
    and nothing went wrong beyond the faults themselves (no error but the one the
    unknown-column fault must raise: an unexpected exception in the scanner client is logged
    at ERROR, as is a tick that fails in the collector's loop)."""
    import gc

    from tests.support.measure import open_fds
    from tests.support.scanning import running_standin

    caplog.set_level("ERROR")
    async with running_standin() as standin:
        collector, client, _ = collector_for(
            standin.url, timeout=0.05, retry_delays=(0.0,))
        async with client:
            keys = collector.broker.handler.hub.demand()
            for _ in range(5):  # warm up: the keep-alive connection exists
                await collector.tick(keys)
            gc.collect()
            tasks0, fds0 = len(asyncio.all_tasks()), open_fds()
            started, statuses = time.monotonic(), set()
            for i in range(sizes.leak_ticks):
                # enough for every attempt of the tick's two requests (2 each), so that the
                # retry cannot hide it; what a request left over does not reach the next tick
                standin.state.clear_faults()
                standin.state.add_faults([{**LEAK_FAULTS[i % len(LEAK_FAULTS)], "count": 4}])
                await collector.tick(keys)
                statuses.add(collector.broker.handler.hub.status[0])
            elapsed = time.monotonic() - started
            standin.state.clear_faults()
            for _ in range(10):  # a 50 ms timeout: a busy machine may miss it once or twice
                await collector.tick(keys)
                if collector.broker.handler.hub.status[0] == "ok":
                    break
            assert collector.broker.handler.hub.status[0] == "ok"
            await asyncio.sleep(0.2)
            gc.collect()
            tasks1, fds1 = len(asyncio.all_tasks()), open_fds()
            requests = len(standin.state.log)
    print(f"\nFIGURES leak: {sizes.leak_ticks} faulted ticks in {elapsed:.1f}s, {requests} "
          f"requests, statuses {sorted(statuses)}, tasks {tasks0}->{tasks1}, fds {fds0}->{fds1}")
    assert statuses >= {"down"}
    assert tasks1 <= tasks0
    assert fds1 <= fds0 + 2  # at most a keep-alive connection of either side
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    rejected = [e for e in errors if "RSI|5" in e]  # TradingView's 400 names the column
    assert rejected, "the unknown-column fault is logged at ERROR (the log is captured)"
    assert [e for e in errors if e not in rejected] == []


class StallingProxy:
    """A TCP server that accepts and never answers: a SOCKS proxy stuck mid-handshake."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.accepted = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        await reader.read()  # until the client gives up

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"socks5://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.e2e
async def test_proxy_refuses_stalls_and_dies_mid_tick_slots_fail_over(caplog) -> None:
    from tests.support.net import free_port
    from tests.support.scanning import (
        MICROSOCKS,
        Microsocks,
        running_microsocks,
        running_standin,
    )

    if MICROSOCKS is None:
        pytest.skip("microsocks is not installed")
    refused = f"socks5://127.0.0.1:{free_port()}"
    stalling = StallingProxy()
    async with (
        running_standin(base_delay=0.05) as standin,
        stalling as stalled,
        running_microsocks("127.0.0.2") as steady,
    ):
        dying = Microsocks(free_port(), "127.0.0.3", user="quart", password="hunter2-proxy")
        await dying.start()
        try:
            collector, client, sink = collector_for(
                standin.url, proxies=[refused, stalled, steady.url, dying.url], timeout=0.3,
                retry_delays=(0.02, 0.05, 0.1), proxy_cooldowns=(0.5, 1.0, 2.0))
            async with client:
                keys = collector.broker.handler.hub.demand()
                log: list[tuple[str, str]] = []

                async def ticks(count: int) -> None:
                    for _ in range(count):
                        started = time.monotonic()
                        await collector.tick(keys)
                        log.append(tuple(collector.broker.handler.hub.status))
                        await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - started)))

                def peers(since: int = 0) -> set[str]:
                    return {(r.peer or "").split(":")[0] for r in standin.state.log[since:]}

                await ticks(6)
                assert peers() >= {"127.0.0.2", "127.0.0.3"}
                assert stalling.accepted >= 1
                assert all(level != "down" for level, _ in log), log

                # die mid-tick: kill the proxy while a request through it is in flight
                runner = asyncio.get_running_loop().create_task(ticks(20))
                async with asyncio.timeout(10):
                    while not any(r.finished is None  # noqa: ASYNC110 and (r.peer or "").startswith("127.0.0.3")
                                  for r in standin.state.log):
                        await asyncio.sleep(0.002)
                await dying.stop()
                mark = len(standin.state.log)
                await asyncio.sleep(2.0)
                dead_peers = peers(mark)
                # the same address and port again, as a restarted proxy would be
                await dying.start()
                back = len(standin.state.log)
                await runner
                assert "127.0.0.3" not in dead_peers
                assert "127.0.0.3" in peers(back), "the recovered proxy was not used again"
                downs = [entry for entry in log if entry[0] == "down"]
                degraded = [entry for entry in log if entry[0] == "degraded"]
                assert not downs, downs
                assert sink.pieces > 0
                failures = {slot.label: slot.failures for slot in client.slots}
        finally:
            await dying.stop()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "hunter2-proxy" not in text
    print(f"\nFIGURES proxies: {len(log)} ticks, {len(degraded)} degraded, 0 down, "
          f"{len(standin.state.log)} requests, stalled accepts {stalling.accepted}, "
          f"failures by slot {failures}")


# ------------------------------------------------------------------------------ the database

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ThrowawayPostgres:
    """A private PostgreSQL cluster (never the shared one on 5432), run as the postgres user."""

    def __init__(self, root: Path, port: int) -> None:
        import shutil

        self.root, self.port = root, port
        self.data = root / "pgdata"
        self.runuser = shutil.which("runuser")

    def _run(self, *args: str) -> None:
        import subprocess

        assert self.runuser is not None
        subprocess.run([self.runuser, "-u", "postgres", "--", *args], check=True,
                       capture_output=True, timeout=60)

    def init(self) -> None:
        import os
        import shutil

        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres")
        os.chmod(self.root, 0o755)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "-w",
                  "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"


def _can_run_postgres() -> bool:
    import os
    import pwd
    import shutil

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return os.geteuid() == 0 and shutil.which("runuser") is not None and (
        PG_BIN / "initdb").exists()


@pytest.mark.e2e
def test_serve_refuses_to_start_without_its_database(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.net import free_port
    from tests.support.processes import REPO, quartsig_env

    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9",
                       QUARTSIG_DATABASE_URL=f"postgres://quart:pw-s3cret@127.0.0.1:{free_port()}/q")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "quartsig", "serve", "--bind", f"127.0.0.1:{free_port()}"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - started
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    print(f"\nFIGURES db-unreachable: exit {done.returncode} after {elapsed:.1f}s: {lines[-1]!r}")
    assert done.returncode == 2
    assert lines[-1].startswith("quartsig: cannot reach the database at postgres://quart:***@")
    assert "Traceback" not in done.stderr and "pw-s3cret" not in done.stderr + done.stdout
    assert elapsed < 25


@pytest.mark.e2e
@pytest.mark.skipif(not _can_run_postgres(), reason="cannot start a private PostgreSQL cluster")
async def test_database_restart_leaves_connected_clients_alone(tmp_path: Path) -> None:
    import shutil
    import tempfile

    from tests.support.net import free_port

    # pytest's tmp dirs are root-only (0700): the cluster lives where postgres can reach it
    root = Path(tempfile.mkdtemp(prefix="quartsig-pg-"))
    root.chmod(0o755)  # noqa: ASYNC240
    pg = ThrowawayPostgres(root / "pg", free_port())
    await asyncio.to_thread(pg.init)
    await asyncio.to_thread(pg.start)
    try:
        with server_stack(tmp_path / "stack", standin_args=("--step-every", "0.3"),
                          QUARTSIG_INTERVAL="0.5", QUARTSIG_DATABASE_URL=pg.url) as stack:
            await asyncio.to_thread(  # 43 never connects before the outage
                quartsig_cli, stack.env, "account", "add", "43")
            stranger = (await asyncio.to_thread(
                quartsig_cli, stack.env, "token", "issue", "43")).strip()
            clients = [await Client(stack.ws_url, stack.token).connect() for _ in range(5)]
            for client in clients:
                await client.subscribe(*SUMMARY)
                await client.subscribe(*FULL)
            for client in clients:
                await client.wait_for(lambda m: m["type"] == "update", within=10)

            await asyncio.to_thread(pg.stop)
            down_at, marks = time.monotonic(), [len(c.messages) for c in clients]
            # an account not seen lately is told to come back later (1013), not that its
            # token is bad; one admitted lately (a reconnect) gets in from memory
            late = Client(stack.ws_url, stranger)
            with pytest.raises(AssertionError, match=r"closed \(1013\)"):
                await late.connect()
            assert late.close_reason == "accounts unavailable"
            for _ in range(20):  # a reconnect storm of strangers: one traceback, not 21
                storm = Client(stack.ws_url, stranger)
                with pytest.raises(AssertionError, match=r"closed \(1013\)"):
                    await storm.connect()
            back = await Client(stack.ws_url, stack.token).connect()
            await back.subscribe(*SUMMARY)
            await asyncio.sleep(2.5)  # several account checks and ticks without a database
            for client, mark in zip(clients, marks, strict=True):
                updates = [m for _, m in client.messages[mark:] if m["type"] == "update"]
                assert updates and client.close_code is None
            assert any(m["type"] == "snapshot" for _, m in back.messages)
            down_for = time.monotonic() - down_at

            await asyncio.to_thread(pg.start)
            # a newcomer gets in again, retrying with backoff as the protocol says
            attempts, delay = 0, 0.2
            while True:
                attempts += 1
                newcomer = Client(stack.ws_url, stranger)
                try:
                    await newcomer.connect()
                    break
                except AssertionError:
                    assert newcomer.close_code == 1013 and attempts < 10
                    await asyncio.sleep(delay)
                    delay *= 2
            marks = [len(c.messages) for c in clients]
            await asyncio.sleep(1.5)
            for client, mark in zip(clients, marks, strict=True):
                assert [m for _, m in client.messages[mark:] if m["type"] == "update"]
                assert client.close_code is None
            log = stack.server.log.read_text()
            assert "account check failed; connections kept" in log
            assert log.count("account lookup failed") <= 2, log.count("account lookup failed")
            for client in [*clients, back, newcomer]:
                await client.close()
            print(f"\nFIGURES db-restart: 5 clients kept data through {down_for:.1f}s without "
                  f"a database, a 6th reconnected meanwhile; an account not seen lately 1013 "
                  f"while down, in after {attempts} attempt(s)")
    finally:
        import contextlib

        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg.stop)
        shutil.rmtree(root, ignore_errors=True)
