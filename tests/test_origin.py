"""The Origin check compares scheme, host and port (issue 14, finding 9)."""

from __future__ import annotations

import pytest

from quartsig.web.stream import origin_allowed

HOST = "board.example.com"


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "forwarded"),
    [
        (None, HOST, "wss", None),  # not a browser
        ("https://board.example.com", HOST, "wss", None),
        ("https://board.example.com/", HOST, "wss", None),
        ("https://Board.Example.com:443", HOST, "wss", None),
        ("http://board.example.com", HOST, "ws", None),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws", None),
        ("http://[::1]:8000", "[::1]:8000", "ws", None),
        # TLS ends at the platform's router: it says so in X-Forwarded-Proto (a page cannot
        # set that header on a WebSocket handshake, so it cannot lie to this check).
        ("https://board.example.com", HOST, "ws", "https"),
        ("https://board.example.com", HOST, "ws", "https, http"),
    ],
)
def test_own_origin_is_allowed(origin: str | None, host: str, scheme: str,
                               forwarded: str | None) -> None:
    assert origin_allowed(origin, host, (), scheme=scheme, forwarded_proto=forwarded)


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://board.example.com", HOST, "wss"),  # a plain-HTTP page of the same host
        ("https://board.example.com", HOST, "ws"),
        ("http://board.example.com:8443", "board.example.com:8443", "wss"),
        ("https://board.example.com:8443", HOST, "wss"),  # another port
        ("https://board.example.com", "board.example.com:8443", "wss"),
        ("https://evil.example", HOST, "wss"),
        ("https://board.example.com.evil.example", HOST, "wss"),
        ("null", HOST, "wss"),
        ("board.example.com", HOST, "wss"),
    ],
)
def test_another_scheme_host_or_port_is_refused(origin: str, host: str, scheme: str) -> None:
    assert not origin_allowed(origin, host, (), scheme=scheme)


def test_allowlist_entries_are_compared_normalised() -> None:
    allowed = ("https://OK.example:443", "http://dev.example:8080/")
    for origin in ("https://ok.example", "https://ok.example:443/", "http://dev.example:8080"):
        assert origin_allowed(origin, HOST, allowed, scheme="wss")
    for origin in ("http://ok.example", "https://ok.example:8443", "http://dev.example",
                   "https://dev.example:8080"):
        assert not origin_allowed(origin, HOST, allowed, scheme="wss")
    assert origin_allowed("https://anything.example", HOST, ("*",), scheme="wss")
