"""``quartsig collect`` serves ``/livez``, ``/readyz`` and ``/metrics`` on a bind of its own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from quartsig.ops.probes import respond
from tests.support.net import free_port, http, wait_until
from tests.support.processes import REPO, quartsig_env, stop_process

ROUTES = {"/livez": lambda: (200, "application/json", b'{"status": "ok"}')}


def test_respond_routes_get_and_refuses_the_rest() -> None:
    assert respond(ROUTES, b"GET /livez HTTP/1.1\r\n")[0] == 200
    assert respond(ROUTES, b"GET /livez?x=1 HTTP/1.1\r\n")[0] == 200
    assert respond(ROUTES, b"POST /livez HTTP/1.1\r\n")[0] == 405
    assert respond(ROUTES, b"GET /ws HTTP/1.1\r\n")[0] == 404
    assert respond(ROUTES, b"garbage\r\n")[0] == 404


def _redis_up() -> bool:
    done = subprocess.run(["redis-cli", "ping"], capture_output=True, text=True, check=False)
    return done.stdout.strip() == "PONG"


@pytest.mark.e2e
def test_quartsig_collect_answers_its_probes_and_metrics(tmp_path: Path) -> None:
    if not _redis_up():
        pytest.skip("needs the Redis at 127.0.0.1:6379")
    port = free_port()
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9",
                       QUARTSIG_REDIS_URL="redis://127.0.0.1:6379/0",
                       QUARTSIG_REDIS_PREFIX=f"test:{uuid.uuid4().hex[:8]}:",
                       QUARTSIG_COLLECT_BIND=f"127.0.0.1:{port}")
    log = tmp_path / "collect.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "quartsig", "collect", "--demo"],
                                   env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http("GET", f"{url}/readyz", timeout=2)[0] == 200, 60,
                   what=f"/readyz of quartsig collect\n{log.read_text()}")
        status, body = http("GET", f"{url}/readyz")
        assert json.loads(body)["failing"] == []
        assert http("GET", f"{url}/livez") == (200, b'{"status": "ok"}')
        wait_until(lambda: b"quartsig_lease_held 1.0" in http("GET", f"{url}/metrics")[1], 60,
                   what="the collector leading")
        status, body = http("GET", f"{url}/metrics")
        assert status == 200 and b"quartsig_data_age_seconds" in body
        assert http("GET", f"{url}/ws")[0] == 404

        # A second collector on the same probe port: one line, exit 2, never joins.
        second = subprocess.run([sys.executable, "-m", "quartsig", "collect", "--demo"],
                                env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                                check=False)
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines()[-1] == (
            f"quartsig: cannot listen on 127.0.0.1:{port}: Address already in use")
        assert "joining the cluster" not in second.stderr

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert log.read_text().splitlines()[-1].endswith("quartsig stopped")
    finally:
        stop_process(process)
