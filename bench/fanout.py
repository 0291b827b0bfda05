"""Fan-out: N WebSocket connections to one real ``quartsig serve``, side by side with two peers.

    python -m bench.fanout --clients 1000,5000,10000 [--rounds 2] [--ticks 3] [--procs 2]
                           [--modes browser[,plain]] [--profile summary]
                           [--servers quartsig,quart,quart-deflate,websockets]

Processes (all on 127.0.0.1, each with its own ``RLIMIT_NOFILE``, raised to the hard limit):
the stand-in scanner (``python -m tests.support.standin``), the server under test, and
``--procs`` client processes (``python -m bench.clients``) holding the connections.

For each N, each client mode (``browser``: clients offer permessage-deflate and send an
Origin, as browsers do; ``plain``: no offer), and each round, every server is started
fresh, in turn, and given the same N connections with the same subscriptions (5 distinct
keys per connection, Zipf over the stand-in's ~190 symbols and over timeframes, fixed seed):

- ``quartsig``: ``quartsig serve`` (Hypercorn + uvloop, ``hypercorn.toml``), real tokens,
  ``QUARTSIG_INTERVAL`` = ``--interval``. A tick: the stand-in is stepped with every
  value moving (``change_share`` 1.0), the collector's next tick fetches and publishes.
  Latency of a connection = when its update frame arrived - the frame's ``ts`` (the
  Unix ms at which the scanner replies were in, taken by the collector before compute,
  diff, encode and fan-out).
- ``quart``: a bare Quart route under the same Hypercorn config, permessage-deflate
  declined as in ``quartsig serve``, sending ONE pre-encoded frame per connection, of the
  mean size of quartsig's frames in the same round (the ceiling of our stack).
- ``quart-deflate``: the same route with Hypercorn's default (deflate accepted if offered).
- ``websockets``: the ``websockets`` library, default settings, sending each key's update
  as its own frame (``websockets.broadcast`` per key, of quartsig's mean piece size).
  A connection's latency is that of the last of its frames.

For the peers, ``ts`` is the broadcast's start. Printed per server: connections and how
many negotiated deflate, frames and bytes per tick, p50/p99/max latency over all
connections (median over the ticks of all rounds), server CPU per tick (utime + stime
from /proc over trigger -> last client served; and from the tick's start: for quartsig
the collector's first scanner request after the step, in the stand-in's log, so that the
up to ``--interval`` of waiting for the collector's next tick, with its heartbeats, is
not counted against a peer whose window opens with its broadcast), RSS growth per
connection when idle (connected and subscribed) and after the ticks; then ratios
quartsig / peer, each the median over rounds of the ratio within the round. Then, for each
quartsig server (started through ``bench/gcwatch.py``, which times every cycle collection with
``gc.callbacks``): the collections during the ticks (from the step to the last frame), their
p99 and max pause, and the max over the whole run, start-up and connections included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients import raise_nofile
from tests.support.measure import cpu_seconds, percentile, rss_kib
from tests.support.net import free_port, http, http_json, wait_listening, wait_until
from tests.support.processes import stop_process

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
POPULARITY = ("1h", "15m", "5m", "4h", "1d", "1m", "30m", "2h", "1W", "1M")
SERVERS = ("quartsig", "quart", "quart-deflate", "websockets")
TG_ID = 4242
#: ``--variant NAME=DIR`` (A/B runs): server kind NAME runs the ``quartsig`` package in DIR.
VARIANTS: dict[str, Path] = {}


# -- processes ---------------------------------------------------------------------------------


class Piped:
    """A subprocess driven by JSON lines on stdin/stdout."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = open(log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=REPO,
            env=env, text=True, bufsize=1,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.process.args} died; see {self.log.name}")
        return json.loads(line)  # type: ignore[no-any-return]

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.receive()

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()
        stop_process(self.process, 15)
        self.log.close()


class Clients:
    """``procs`` client processes; a call goes to all of them at once."""

    def __init__(self, procs: int, logs: Path) -> None:
        self.procs = [Piped([PY, "-m", "bench.clients"], logs / f"client{i}.log")
                      for i in range(procs)]  # fmt: skip

    def all(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        for proc in self.procs:
            proc.send(message)
        return [proc.receive() for proc in self.procs]

    def connect(self, port: int, path: str, deflate: bool, subs: list[Any]) -> dict[str, Any]:
        share = -(-len(subs) // len(self.procs))
        for i, proc in enumerate(self.procs):
            proc.send({"op": "connect", "host": "127.0.0.1", "port": port, "path": path,
                       "deflate": deflate, "first": i * share,
                       "subs": subs[i * share : (i + 1) * share], "concurrency": 50})  # fmt: skip
        replies = [proc.receive() for proc in self.procs]
        total: dict[str, Any] = {"connected": 0, "failed": 0, "deflate": 0, "errors": {}}
        for reply in replies:
            for name in ("connected", "failed", "deflate"):
                total[name] += reply[name]
            for error, count in reply["errors"].items():
                total["errors"][error] = total["errors"].get(error, 0) + count
        total["seconds"] = max(reply["seconds"] for reply in replies)
        return total

    def progress(self) -> tuple[dict[int, int], int]:
        counts: dict[int, int] = {}
        opened = 0
        for reply in self.all({"op": "progress"}):
            opened += reply["open"]
            for ts, count in reply["counts"].items():
                counts[int(ts)] = counts.get(int(ts), 0) + count
        return counts, opened

    def collect(self) -> tuple[dict[int, list[float]], dict[int, list[int]]]:
        lat: dict[int, list[float]] = {}
        sizes: dict[int, list[int]] = {}
        for reply in self.all({"op": "collect"}):
            for ts, values in reply["lat"].items():
                lat.setdefault(int(ts), []).extend(values)
            for ts, size in reply["sizes"].items():
                known = sizes.setdefault(int(ts), [0, 0, 0])
                for i in range(3):
                    known[i] += size[i]
        return lat, sizes

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.ask({"op": "exit"})
            proc.close()


@dataclass
class Stack:
    """The stand-in scanner and a quartsig data dir with one active account."""

    work: Path
    standin: subprocess.Popen[Any]
    standin_url: str
    env: dict[str, str]
    token: str

    @classmethod
    @contextlib.contextmanager
    def start(cls, work: Path, interval: float, change_share: float) -> Iterator[Stack]:
        from cryptography.fernet import Fernet

        from quartsig.access.tokens import TokenAuthority

        port = free_port()
        log = open(work / "standin.log", "ab")  # noqa: SIM115
        standin = subprocess.Popen(
            [PY, "-m", "tests.support.standin", "--port", str(port), "--change-share",
             str(change_share)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_json("GET", f"{url}/_standin/stats", timeout=1), 30,
                       what="the stand-in")
            key = Fernet.generate_key().decode()
            env = {k: v for k, v in os.environ.items() if not k.startswith("QUARTSIG_")}
            env.pop("PORT", None)
            env.update(
                QUARTSIG_DATA_DIR=str(work / "data"), QUARTSIG_SCANNER_URL=url,
                QUARTSIG_INTERVAL=str(interval), QUARTSIG_SECRET_KEYS=key,
                QUARTSIG_PLUGINS_DIR=str(work / "no-plugins"), PYTHONUNBUFFERED="1",
                # thousands of clients of one account from one address model many users
                QUARTSIG_MAX_CONNECTIONS_PER_ACCOUNT="0", QUARTSIG_MAX_CONNECTIONS_PER_ADDRESS="0",
                QUARTSIG_NEW_KEYS_PER_MINUTE="100000", QUARTSIG_EARLY_KEYS_PER_MINUTE="100000",
                QUARTSIG_EARLY_FETCHES_PER_ACCOUNT="100000", QUARTSIG_MAX_KEYS_PER_ACCOUNT="0",
            )  # fmt: skip
            for args in (["migrate"], ["account", "add", str(TG_ID)]):
                subprocess.run([PY, "-m", "quartsig", *args], env=env, cwd=REPO, check=True,
                               capture_output=True)  # fmt: skip
            token = TokenAuthority([key], 7 * 86400).issue(TG_ID).token
            yield cls(work, standin, url, env, token)
        finally:
            stop_process(standin, 15)
            log.close()

    def step(self) -> None:
        http_json("POST", f"{self.standin_url}/_standin/step", {"count": 1})

    def scans(self) -> list[dict[str, Any]]:
        return list(http_json("GET", f"{self.standin_url}/_standin/requests"))


class Server:
    """One server under test: ``quartsig serve`` or a peer."""

    def __init__(self, kind: str, stack: Stack) -> None:
        self.kind = kind
        self.stack = stack
        self.port = free_port()
        log = stack.work / f"{kind}.log"
        if kind.startswith("quartsig"):
            env = dict(stack.env)
            variant = VARIANTS.get(kind)
            if variant is not None:  # another copy of the package, for A/B figures
                env["PYTHONPATH"] = str(variant)
            self.log = open(log, "ab")  # noqa: SIM115
            # Through bench/gcwatch.py: every cycle collection's pause, written at exit.
            self.gc_file: Path | None = stack.work / f"{kind}-{self.port}-gc.json"
            self.process = subprocess.Popen(
                [PY, str(REPO / "bench" / "gcwatch.py"), str(self.gc_file),
                 "quartsig", "serve", "--bind", f"127.0.0.1:{self.port}",
                 "--config", str(REPO / "hypercorn.toml")],
                stdout=self.log, stderr=subprocess.STDOUT, env=env,
                cwd=variant or REPO,  # `python -m` puts the cwd first on sys.path
            )  # fmt: skip
            wait_until(lambda: http("GET", f"http://127.0.0.1:{self.port}/healthz", timeout=1)[0]
                       == 200, 60, what="quartsig serve")  # fmt: skip
            self.pid = self.process.pid
            self.peer: Piped | None = None
        else:
            self.gc_file = None
            module, extra = {
                "quart": ("bench.peers.quart_peer", ["--decline-deflate"]),
                "quart-deflate": ("bench.peers.quart_peer", []),
                "websockets": ("bench.peers.websockets_peer", []),
            }[kind]
            self.peer = Piped([PY, "-m", module, "--port", str(self.port), *extra], log,
                              env=stack.env)  # fmt: skip
            line = self.peer.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"{kind} did not start; see {log}")
            asyncio.run(wait_listening(self.port, within=30))
            self.pid = self.peer.pid

    @property
    def path(self) -> str:
        return f"/ws?token={self.stack.token}"

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.close()
        else:
            stop_process(self.process, 15)
            self.log.close()


# -- the workload ------------------------------------------------------------------------------


def subscriptions(count: int, profile: str, seed: int = 7, per: int = 5) -> list[list[list[str]]]:
    """``per`` distinct keys per connection: Zipf over symbols and over timeframes."""
    from quartsig.demo.market import DEFAULT_UNIVERSE, NO_TECHNICALS

    rng = random.Random(seed)
    symbols = sorted(s for group in DEFAULT_UNIVERSE.values() for s in group
                     if s not in NO_TECHNICALS)  # fmt: skip
    rng.shuffle(symbols)
    sw = [1 / rank for rank in range(1, len(symbols) + 1)]
    tw = [1 / rank for rank in range(1, len(POPULARITY) + 1)]
    out = []
    for _ in range(count):
        keys: dict[tuple[str, str], None] = {}
        while len(keys) < per:
            keys[(rng.choices(symbols, sw)[0], rng.choices(POPULARITY, tw)[0])] = None
        out.append([[symbol, tf, profile] for symbol, tf in keys])
    return out


@dataclass
class Tick:
    count: int
    p50: float
    p99: float
    max: float
    cpu_ms: float
    frames: int
    bytes: int
    pieces: int
    #: CPU from the tick's start (quartsig: the collector's first scanner request after the
    #: step, from the stand-in's log; a peer: the broadcast's start, as ``cpu_ms``).
    tick_cpu_ms: float = float("nan")


class CpuSampler:
    """The server's CPU seconds every few ms, so CPU can be read from a moment found later.

    ``/proc`` counts in 10 ms clock ticks; a reading is taken at or before the moment asked."""

    def __init__(self, pid: int, every: float = 0.004) -> None:
        import threading

        self.pid = pid
        self.samples: list[tuple[float, float]] = [(time.time(), cpu_seconds(pid))]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append((time.time(), cpu_seconds(self.pid)))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.samples[-1][1]

    def at(self, moment: float) -> float:
        """CPU seconds at the last reading not after ``moment`` (so the span is overcounted)."""
        before = [cpu for when, cpu in self.samples if when <= moment]
        return before[-1] if before else self.samples[0][1]


@dataclass
class Run:
    kind: str
    n: int
    mode: str
    connected: int = 0
    deflate: int = 0
    connect_s: float = 0.0
    rss_idle: float = 0.0  # KiB per connection
    rss_after: float = 0.0
    ticks: list[Tick] = field(default_factory=list)
    closes: dict[str, int] = field(default_factory=dict)
    #: quartsig: the cycle collector's pauses (ms, generation) from the step of each tick to
    #: its last frame received, and over the whole run (start-up, connections, ticks).
    gc_ticks: list[tuple[float, int, float]] = field(default_factory=list)  # wall ms, gen, CPU ms
    gc_all: list[tuple[float, int, float]] = field(default_factory=list)
    #: quartsig with ``--gc-census``: tracked objects by type once connected (bench/gcwatch.py).
    census: dict[str, Any] = field(default_factory=dict)


def _await_tick(clients: Clients, expected: int, after: int, timeout: float) -> int | None:
    """The ts of the first tick newer than ``after`` once (almost) every connection has it."""
    deadline = time.monotonic() + timeout
    seen: tuple[int, int] | None = None
    stable_since = 0.0
    while time.monotonic() < deadline:
        counts, _ = clients.progress()
        fresh = {ts: c for ts, c in counts.items() if ts > after}
        if fresh:
            ts = min(fresh)
            count = fresh[ts]
            if count >= expected:
                return ts
            if seen == (ts, count):
                if time.monotonic() - stable_since > 1.5:
                    return ts  # nothing more is coming (a few keys did not change)
            else:
                seen, stable_since = (ts, count), time.monotonic()
        time.sleep(0.05)
    return None


def one_run(kind: str, n: int, mode: str, stack: Stack, clients: Clients, subs: list[Any],
            ticks: int, interval: float, sizes: tuple[int, int]) -> Run:  # fmt: skip
    run = Run(kind, n, mode)
    server = Server(kind, stack)
    try:
        time.sleep(1.0)
        rss0 = rss_kib(server.pid)
        connected = clients.connect(server.port, server.path, mode == "browser", subs)
        run.connected, run.deflate, run.connect_s = (
            connected["connected"],
            connected["deflate"],
            connected["seconds"],
        )
        if connected["failed"] or connected["errors"]:
            print(f"  ! {kind}: {connected}", file=sys.stderr)
        time.sleep(interval + 1.5 if kind.startswith("quartsig") else 1.0)  # first snapshots settle
        run.rss_idle = (rss_kib(server.pid) - rss0) / max(1, run.connected)
        if GC_CENSUS and server.gc_file is not None:
            census = server.gc_file.with_suffix(".census.json")
            os.kill(server.pid, signal.SIGUSR2)
            with contextlib.suppress(RuntimeError):
                wait_until(census.exists, 30, what="the census")
                time.sleep(0.5)
                run.census = json.loads(census.read_text())
        last = int(time.time() * 1000)
        spy = _spy(kind, n, mode, server.pid)
        windows: list[tuple[float, float]] = []
        for _ in range(ticks):
            clients.all({"op": "reset"})
            sampler = CpuSampler(server.pid)
            cpu0 = sampler.samples[0][1]
            stepped = time.time()
            if kind.startswith("quartsig"):
                stack.step()
            else:
                assert server.peer is not None
                frame_size, piece_size = sizes
                server.peer.ask({"op": "broadcast", "frame_size": frame_size,
                                 "piece_size": piece_size})  # fmt: skip
            ts = _await_tick(clients, run.connected, last, timeout=interval + 30)
            windows.append((stepped, time.time()))
            cpu_end = sampler.stop()
            cpu = cpu_end - cpu0
            started = stepped
            if kind.startswith("quartsig"):  # the collector's tick began with its first request
                after = [r["time"] for r in stack.scans() if r["time"] > stepped]
                started = min(after, default=stepped)
            tick_cpu = cpu_end - sampler.at(started)
            if ts is None:
                print(f"  ! {kind}: a tick never arrived", file=sys.stderr)
                continue
            last = ts
            lat, size = clients.collect()
            values = lat[ts]
            frames, nbytes, pieces = size[ts]
            run.ticks.append(Tick(len(values), percentile(values, 50), percentile(values, 99),
                                  max(values), cpu * 1000, frames, nbytes, pieces,
                                  tick_cpu * 1000))  # fmt: skip
            time.sleep(0.3)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        run.rss_after = (rss_kib(server.pid) - rss0) / max(1, run.connected)
        _, opened = clients.progress()
        if opened < run.connected:
            print(f"  ! {kind}: {run.connected - opened} connections closed", file=sys.stderr)
        run.closes = {str(k): v for reply in clients.all({"op": "progress"})
                      for k, v in reply["closes"].items()}  # fmt: skip
        clients.all({"op": "close"})
    finally:
        server.stop()
    if server.gc_file is not None and server.gc_file.exists():
        pauses = json.loads(server.gc_file.read_text())
        run.gc_all = [(seconds * 1000, generation, cpu * 1000)
                      for _, seconds, generation, cpu in pauses]
        run.gc_ticks = [(seconds * 1000, generation, cpu * 1000)
                        for end, seconds, generation, cpu in pauses
                        if any(start <= end - seconds and end <= stop
                               for start, stop in windows)]  # fmt: skip
    return run


def gc_table(runs: list[Run]) -> str:
    """The cycle collector's pauses in each quartsig server, all its rounds together: wall
    time (what a frame waits) and the server thread's CPU time (the collector's own work;
    less when the process was descheduled meanwhile)."""
    lines = ["| server | collections in the ticks (full) | p99 ms wall (CPU) | "
             "max ms wall (CPU) | its generation | max ms over the whole run, wall (CPU) | "
             "full collections in the run |", "|---|---:|---:|---:|---:|---:|---:|"]
    for kind in dict.fromkeys(r.kind for r in runs if r.gc_all):
        mine = [r for r in runs if r.kind == kind]
        ticks = [pause for r in mine for pause in r.gc_ticks]
        whole = [pause for r in mine for pause in r.gc_all]
        full = sum(1 for _, generation, _ in ticks if generation == 2)
        worst = max(ticks, default=(0.0, 0, 0.0))
        worst_all = max(whole, default=(0.0, 0, 0.0))
        lines.append(
            f"| {kind} | {len(ticks)} ({full}) | "
            f"{percentile([p[0] for p in ticks], 99) if ticks else 0:.1f} "
            f"({percentile([p[2] for p in ticks], 99) if ticks else 0:.1f}) | "
            f"{worst[0]:.1f} ({max((p[2] for p in ticks), default=0):.1f}) | gen{worst[1]} | "
            f"{worst_all[0]:.1f} ({max((p[2] for p in whole), default=0):.1f}) | "
            f"{sum(1 for _, generation, _ in whole if generation == 2)} |")
    for run in runs:
        if run.census:
            per = max(1, run.connected)
            top = ", ".join(f"{name} {count / per:.1f}" for name, count in run.census["types"][:15])
            lines.append(f"\n{run.kind} round {getattr(run, 'round', 0)}: "
                         f"{run.census['tracked']} objects tracked once connected "
                         f"({run.census['tracked'] / per:.0f} per connection; "
                         f"{run.census['frozen']} frozen); per connection: {top}")
            if run.census.get("layers"):  # by package, where an object says (gcwatch._layer)
                layers: dict[str, float] = {}
                for name, count in run.census["layers"]:
                    layer = name.partition(" ")[0]
                    layers[layer] = layers.get(layer, 0) + count / per
                lines.append("by package, per connection: " + ", ".join(
                    f"{layer} {count:.1f}" for layer, count in
                    sorted(layers.items(), key=lambda item: -item[1])) + "; top: " + ", ".join(
                    f"{name} {count / per:.1f}" for name, count in run.census["layers"][:25]))
    return "\n".join(lines)


SPY_DIR: Path | None = None
GC_CENSUS = False


def _spy(kind: str, n: int, mode: str, pid: int) -> subprocess.Popen[Any] | None:
    """``py-spy record`` on the server during the ticks (``--py-spy DIR``), collapsed stacks."""
    if SPY_DIR is None:
        return None
    out = SPY_DIR / f"{kind}-{n}-{mode}-{pid}.txt"
    spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-o", str(out), "-f", "raw",
                            "-r", "250"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(1.0)
    return spy


# -- report ------------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(n: int, mode: str, runs: list[Run], kinds: Sequence[str]) -> str:
    header = (
        f"### {n} connections, {'browser-like clients (offer permessage-deflate)' if mode == 'browser' else 'clients without deflate'}\n\n"  # noqa: E501
        "| server | conns (deflate) | frames/tick | B/frame | p50 ms | p99 ms | max ms | "
        "CPU ms/tick | CPU ms from tick start | CPU us/conn | KiB/conn idle | "
        "KiB/conn after ticks |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    for kind in kinds:
        mine = [r for r in runs if r.kind == kind]
        ticks = [t for r in mine for t in r.ticks]
        if not mine or not ticks:
            continue
        conns = min(r.connected for r in mine)
        cpu = med([t.cpu_ms for t in ticks])
        tick_cpu = med([t.tick_cpu_ms for t in ticks])
        lines.append(
            f"| {kind} | {conns} ({min(r.deflate for r in mine)}) | "
            f"{med([t.frames for t in ticks]):.0f} | "
            f"{med([t.bytes / max(1, t.frames) for t in ticks]):.0f} | "
            f"{med([t.p50 for t in ticks]):.0f} | {med([t.p99 for t in ticks]):.0f} | "
            f"{med([t.max for t in ticks]):.0f} | {cpu:.0f} | {tick_cpu:.0f} | "
            f"{cpu * 1000 / conns:.1f} | "
            f"{med([r.rss_idle for r in mine]):.1f} | {med([r.rss_after for r in mine]):.1f} |"
        )
    ratios = []
    q = [r for r in runs if r.kind == "quartsig"]
    for kind in kinds:
        if kind == "quartsig" or not q:
            continue
        per_round = []
        for qr in q:
            peer = [r for r in runs if r.kind == kind and r.round == qr.round]  # type: ignore[attr-defined]
            if peer and peer[0].ticks and qr.ticks:
                a, b = qr.ticks, peer[0].ticks
                per_round.append((
                    med([t.p99 for t in a]) / med([t.p99 for t in b]),
                    med([t.max for t in a]) / med([t.max for t in b]),
                    med([t.cpu_ms for t in a]) / max(1e-9, med([t.cpu_ms for t in b])),
                    med([t.tick_cpu_ms for t in a]) / max(1e-9, med([t.tick_cpu_ms for t in b])),
                ))  # fmt: skip
        if per_round:
            ratios.append(
                f"| quartsig / {kind} | {med([r[0] for r in per_round]):.2f} | "
                f"{med([r[1] for r in per_round]):.2f} | {med([r[2] for r in per_round]):.2f} | "
                f"{med([r[3] for r in per_round]):.2f} | "
                + " ".join(f"{r[0]:.2f}" for r in per_round)
                + " | "
                + " ".join(f"{r[3]:.2f}" for r in per_round)
                + " |"
            )
    if ratios:
        lines += ["", "| ratio (median over rounds) | p99 | max | CPU/tick | CPU from tick start | "
                  "p99 per round | CPU from tick start per round |",
                  "|---|---:|---:|---:|---:|---|---|", *ratios]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1000,5000,10000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ticks", type=int, default=3, help="measured ticks per server and round")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--modes", default="browser")
    parser.add_argument(
        "--plain-servers",
        default="quartsig,quart",
        help="servers also run with clients that do not offer deflate",
    )
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--profile", default="summary", choices=("summary", "full"))
    parser.add_argument("--interval", type=float, default=2.0, help="QUARTSIG_INTERVAL")
    parser.add_argument("--change-share", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="A/B: server kind NAME (starting with quartsig) runs the quartsig "
        "package found in DIR; add NAME to --servers",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each server with py-spy during the ticks (collapsed stacks)",
    )
    parser.add_argument("--gc-census", action="store_true",
                        help="quartsig: count the objects the cycle collector tracks, by type, "
                             "once connected")  # fmt: skip
    args = parser.parse_args(argv)
    global SPY_DIR, GC_CENSUS
    SPY_DIR = args.py_spy
    GC_CENSUS = args.gc_census
    for item in args.variant:
        name, _, where = item.partition("=")
        VARIANTS[name] = Path(where).resolve()
    if SPY_DIR is not None:
        SPY_DIR.mkdir(parents=True, exist_ok=True)
    hard = raise_nofile()  # inherited by every child: each process gets its own budget
    kinds = [k for k in args.servers.split(",") if k]
    plain_kinds = [k for k in args.plain_servers.split(",") if k in kinds]
    work = Path(tempfile.mkdtemp(prefix="quartsig-fanout-"))
    started = time.monotonic()
    print(
        f"fan-out: profile {args.profile}, 5 keys per connection, change_share "
        f"{args.change_share}, {args.procs} client processes, RLIMIT_NOFILE {hard} per "
        f"process, {args.rounds} rounds x {args.ticks} ticks; logs in {work}\n",
        flush=True,
    )
    with Stack.start(work, args.interval, args.change_share) as stack:
        clients = Clients(args.procs, work)
        try:
            for n in [int(x) for x in args.clients.split(",")]:
                subs = subscriptions(n, args.profile)
                for mode in args.modes.split(","):
                    mode_kinds = kinds if mode == "browser" else plain_kinds
                    runs: list[Run] = []
                    for round_ in range(args.rounds):
                        sizes = (700, 140)
                        for kind in mode_kinds:
                            run = one_run(kind, n, mode, stack, clients, subs, args.ticks,
                                          args.interval, sizes)  # fmt: skip
                            run.round = round_  # type: ignore[attr-defined]
                            runs.append(run)
                            if kind == "quartsig" and run.ticks:
                                frames = sum(t.frames for t in run.ticks)
                                nbytes = sum(t.bytes for t in run.ticks)
                                pieces = sum(t.pieces for t in run.ticks)
                                sizes = (round(nbytes / frames), round(nbytes / pieces))
                            t = run.ticks
                            print(
                                f"  n={n} {mode} round {round_} {kind}: {run.connected} conns "
                                f"in {run.connect_s:.1f}s, p99 "
                                f"{' '.join(f'{x.p99:.0f}' for x in t)} ms, max "
                                f"{' '.join(f'{x.max:.0f}' for x in t)} ms, cpu "
                                f"{' '.join(f'{x.cpu_ms:.0f}' for x in t)} ms (from tick "
                                f"start {' '.join(f'{x.tick_cpu_ms:.0f}' for x in t)}), "
                                f"closes {run.closes}, GC in ticks max "
                                f"{max((p[0] for p in run.gc_ticks), default=0):.1f} ms",
                                file=sys.stderr,
                                flush=True,
                            )
                    print(table(n, mode, runs, mode_kinds), flush=True)
                    print(flush=True)
                    print(gc_table(runs), flush=True)
                    print(flush=True)
        finally:
            clients.close()
    print(f"(took {time.monotonic() - started:.0f} s)")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
