"""Tokens never reach a log line, whoever logs them and however."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

from quartsig.logs import REDACTED, RedactingFilter, Sparse, install, redact

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
