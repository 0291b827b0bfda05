"""Real processes for end-to-end tests: the stand-in scanner and ``quartsig serve``.

Each helper starts a subprocess with its output in a log file (shown when it
fails to start), waits until it answers, and stops it with SIGTERM, then
SIGKILL. No pytest here: the benchmarks import this module from a clone installed with only
the bench extra (``tests/test_bench.py`` imports every benchmark with pytest blocked)::

    from tests.support.processes import Standin, QuartsigServer, quartsig_cli

    with Standin.start() as standin, QuartsigServer.start(env) as server:
        ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from tests.support.net import free_port, http, http_json, wait_until

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@dataclass
class Standin:
    """``python -m tests.support.standin`` in a subprocess; ``url`` is its base URL."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    @contextlib.contextmanager
    def start(cls, log_dir: Path, *args: str, port: int = 0) -> Iterator[Standin]:
        log = log_dir / "standin.log"
        port = port or free_port()
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.standin", "--port", str(port), *args],
                stdout=sink, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        standin = cls(process, f"http://127.0.0.1:{port}", log)
        try:
            standin.wait_ready()
            yield standin
        finally:
            stop_process(process)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"stand-in exited:\n{_tail(self.log)}")
            return http("GET", f"{self.url}/_standin/stats", timeout=1)[0] == 200

        try:
            wait_until(ready, timeout, what="the stand-in")
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- stand-in log ---\n{_tail(self.log)}") from None

    def step(self, count: int = 1) -> int:
        return int(http_json("POST", f"{self.url}/_standin/step", {"count": count})["step"])

    def set_values(self, ticker: str, timeframe: str, values: Mapping[str, Any]) -> Any:
        return http_json(
            "POST", f"{self.url}/_standin/values",
            {"ticker": ticker, "timeframe": timeframe, "values": dict(values)},
        )  # fmt: skip

    def add_faults(self, *faults: Mapping[str, Any]) -> None:
        http_json("POST", f"{self.url}/_standin/faults", [dict(f) for f in faults])

    def clear_faults(self) -> None:
        http_json("DELETE", f"{self.url}/_standin/faults")

    def requests(self) -> list[dict[str, Any]]:
        return list(http_json("GET", f"{self.url}/_standin/requests"))

    def clear_requests(self) -> None:
        http_json("DELETE", f"{self.url}/_standin/requests")


def quartsig_env(data_dir: Path, scanner_url: str, **extra: str) -> dict[str, str]:
    """Environment for ``quartsig`` commands: a fresh data dir, key and fast ticks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARTSIG_")}
    env.update(
        QUARTSIG_DATA_DIR=str(data_dir),
        QUARTSIG_SCANNER_URL=scanner_url,
        QUARTSIG_INTERVAL="1",
        QUARTSIG_SECRET_KEYS=Fernet.generate_key().decode(),
        PYTHONUNBUFFERED="1",
    )
    env.pop("PORT", None)
    env.update(extra)
    return env


def quartsig_cli(env: Mapping[str, str], *args: str, timeout: float = 60.0) -> str:
    """Run ``python -m quartsig ARGS``; returns stdout, fails with stderr on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "quartsig", *args],
        env=dict(env), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(
            f"quartsig {' '.join(args)} exited {done.returncode}\n"
            f"stdout: {done.stdout}\nstderr: {done.stderr}"
        )
    return done.stdout


@dataclass
class QuartsigServer:
    """``quartsig serve --bind 127.0.0.1:PORT`` in a subprocess (Hypercorn, real lifespan)."""

    env: dict[str, str]
    port: int
    log: Path
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, env: Mapping[str, str], log_dir: Path, *args: str, port: int = 0
    ) -> Iterator[QuartsigServer]:
        server = cls(dict(env), port or free_port(), log_dir / "quartsig-serve.log", args)
        try:
            server.launch()
            yield server
        finally:
            server.stop()

    def launch(self, timeout: float = START_TIMEOUT) -> None:
        """Start (or start again, on the same port) and wait for ``/healthz``."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("already running")
        self.starts += 1
        with open(self.log, "ab") as sink:
            sink.write(f"\n===== start {self.starts} =====\n".encode())
            sink.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "quartsig", "serve", "--bind", f"127.0.0.1:{self.port}",
                 *self.args],
                stdout=sink, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
            )  # fmt: skip
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        process = self.process
        assert process is not None

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"quartsig serve exited with {process.returncode}")
            return http("GET", f"{self.url}/healthz", timeout=1)[0] == 200

        try:
            wait_until(ready, timeout, what="quartsig serve /healthz")
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- server log ---\n{self.tail()}") from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)

    def kill(self) -> None:
        """Die at once, as a crash would (no graceful close frames)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.launch()

    def tail(self, lines: int = 80) -> str:
        return _tail(self.log, lines)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {series (with labels): value}, comments dropped."""
        status, body = http("GET", f"{self.url}/metrics")
        if status != 200:
            raise AssertionError(f"/metrics -> {status}")
        values: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values
