"""Tokens never reach a log line, whoever logs them and however."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from quartsig.ops import logs
from quartsig.ops.logs import REDACTED, RedactingFilter, Sparse, escape_controls, install, redact

TOKEN = Fernet(Fernet.generate_key()).encrypt(b"42").decode()


@pytest.mark.parametrize(
    "text",
    [
        f"verify {TOKEN} failed",
        f"GET /ws?token={TOKEN} 101",
        "GET /ws?token=short-but-secret&x=1 101",
        f"https://board.example.com/#token={TOKEN}",
        f"Authorization: Bearer {TOKEN}",
        f"{{'token': '{TOKEN}'}}",
        f"TOKEN={TOKEN[:40]}",
    ],
)
def test_redact_removes_tokens(text: str) -> None:
    redacted = redact(text)
    assert TOKEN[6:30] not in redacted
    assert "short-but-secret" not in redacted
    assert REDACTED in redacted


def test_redact_keeps_ordinary_text() -> None:
    text = "GET /healthz?verbose=1 200 tokens_issued=3 gAAAA"
    assert redact(text) == text
    assert redact("GET /ws?token=abc&profile=full").endswith("&profile=full")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A handler on the root logger, as an operator's log set-up would add."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_installed_filter_redacts_messages_args_and_tracebacks(stream: io.StringIO) -> None:
    install()
    log = logging.getLogger("quartsig.somewhere")
    log.info("token %s refused", TOKEN)
    log.info("query %(q)s", {"q": f"token={TOKEN}"})
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        log.exception("while checking")
    output = stream.getvalue()
    assert TOKEN not in output
    assert output.count(REDACTED) == 3
    assert "ValueError: bad token [redacted]" in output


def test_hypercorn_loggers_are_covered(stream: io.StringIO) -> None:
    access = logging.getLogger("hypercorn.access")
    own = io.StringIO()
    handler = logging.StreamHandler(own)
    access.addHandler(handler)
    try:
        install()
        access.info('%(h)s "GET %(Uq)s"', {"h": "1.2.3.4", "Uq": f"/ws?token={TOKEN}"})
    finally:
        access.removeHandler(handler)
    assert TOKEN not in own.getvalue() + stream.getvalue()
    assert "/ws?token=[redacted]" in own.getvalue()


def test_install_is_idempotent() -> None:
    install()
    install()
    root = logging.getLogger()
    assert sum(isinstance(f, RedactingFilter) for f in root.filters) == 1
    for handler in root.handlers:
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1


def test_a_broken_format_string_is_passed_through() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("nope",), None)
    assert RedactingFilter().filter(record)


def test_sparse_lets_one_report_through_per_period_and_counts_the_rest():
    now = [100.0]
    sparse = Sparse(period=10.0, clock=lambda: now[0])
    assert sparse.due() == 0
    assert [sparse.due() for _ in range(3)] == [None, None, None]
    now[0] += 9.9
    assert sparse.due() is None
    now[0] += 0.1
    assert sparse.due() == 4
    assert sparse.due() is None


# -- log injection (issue 14, finding 6) ------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("bell\x07 esc\x1b[31m del\x7f", "bell\\x07 esc\\x1b[31m del\\x7f"),
        ("nel\x85 ls\u2028 ps\u2029", "nel\\x85 ls\\u2028 ps\\u2029"),
        ("tab\tand € stay", "tab\tand € stay"),
    ],
)
def test_escape_controls(raw: str, escaped: str) -> None:
    assert escape_controls(raw) == escaped


def test_a_forged_line_in_an_argument_stays_on_its_own_line(stream: io.StringIO) -> None:
    install()
    logging.getLogger("quartsig.somewhere").warning(
        "refused %s", "x\nERROR quartsig.web.api: forged"
    )
    lines = stream.getvalue().splitlines()
    assert lines == ["quartsig.somewhere refused x\\nERROR quartsig.web.api: forged"]


@pytest.fixture
def repo_hypercorn_config() -> Any:
    from hypercorn.config import Config

    return Config.from_toml(Path(__file__).resolve().parent.parent / "hypercorn.toml")


async def test_hypercorn_access_log_of_a_decoded_path_cannot_forge_a_line(
    repo_hypercorn_config: Any,
) -> None:
    """Hypercorn's own ``"-"`` handler (the direct ``hypercorn -c hypercorn.toml`` path)."""
    from hypercorn.logging import Logger

    logger = Logger(repo_hypercorn_config)  # gives hypercorn.access a stdout handler of its own
    access = logging.getLogger("hypercorn.access")
    own = io.StringIO()
    access.handlers[0].setStream(own)  # type: ignore[attr-defined]
    try:
        install()
        scope: Any = {
            "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": "/\r\n1.2.3.4 \"GET / HTTP/1.1\" 200 0\nERROR quartsig.web.api: forged",
            "raw_path": b"/%0d%0a...", "query_string": b"", "headers": [],
            "client": ("1.2.3.4", 5), "server": None,
        }
        await logger.access(scope, {"status": 404, "headers": []}, 0.001)
    finally:
        access.handlers.clear()
        access.propagate = True
    lines = own.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "\\r\\n1.2.3.4" in lines[0] and "\\nERROR quartsig.web.api" in lines[0]


# -- operations (issue #24.6) -------------------------------------------------------------------


def _access_record(line: str) -> logging.LogRecord:
    return logging.LogRecord("hypercorn.access", logging.INFO, __file__, 1, line, None, None)


def test_probes_stay_out_of_the_access_log_and_other_requests_stay_in() -> None:
    probe = logs.ProbeFilter()
    for path in ("/healthz", "/livez", "/readyz", "/metrics", "/readyz?verbose=1"):
        assert not probe.filter(_access_record(f'127.0.0.1:5 "GET {path} 1.1" 200 2 9us "k"'))
    for path in ("/", "/ws", "/api/tokens", "/healthzz", "/metrics-old"):
        assert probe.filter(_access_record(f'127.0.0.1:5 "GET {path} 1.1" 200 2 9us "k"'))


def test_setup_swaps_the_format_to_one_json_object_per_line_and_back() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        logs.setup("json")
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logging.getLogger("quartsig.x").error("it failed: %s", "why", exc_info=True)
        [line] = stream.getvalue().splitlines()
        body = json.loads(line)
        assert (body["level"], body["logger"], body["message"]) == (
            "ERROR", "quartsig.x", "it failed: why")
        assert "ValueError: bad" in body["exc"]
        logs.setup("text")
        logging.getLogger("quartsig.x").warning("plain")
        assert stream.getvalue().splitlines()[-1].endswith("WARNING quartsig.x: plain")
    finally:
        root.removeHandler(handler)
        logs.setup("text", probes=True)
