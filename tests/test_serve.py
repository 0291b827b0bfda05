"""``quartsig serve`` as a platform runs it: a real process on $PORT, probed, then SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.support.net import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_serve_answers_healthz_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARTSIG_")}
    env.update(QUARTSIG_DATA_DIR=str(tmp_path / "data"), PORT=str(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "quartsig", "serve", "--demo"],
        cwd=REPO,  # picks up the repository's hypercorn.toml, as the Procfile does
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        status, body = 0, {}
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[0]
            try:
                status, body = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except (ConnectionError, urllib.error.URLError):
                time.sleep(0.2)
        assert status == 200
        assert (body["status"], body["database"]) == ("ok", "ok")

        token = Fernet.generate_key().decode()  # any secret-looking value will do
        with contextlib.suppress(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={token}", timeout=5).read()

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)  # graceful_timeout is 5 s
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert '"GET / 1.1"' in output  # the access log is on ...
    assert token not in output  # ... never shows the query string ...
    assert "GET /healthz" not in output  # ... and leaves probes out (QUARTSIG_LOG_PROBES)
    lines = output.splitlines()
    assert any("starting as a standalone server; bind 127.0.0.1:" in line or
               f"bind 0.0.0.0:{port}" in line for line in lines), output
    assert lines[-1].endswith("quartsig stopped"), output
