"""Hostile input: hypothesis-driven frames and tokens against the app, and raw wire abuse.

The contract (docs/protocol.md) is the oracle: every answer is a documented message type, every
error a documented code, every close a documented close code, and the server logs no error
and no traceback. Volume runs through Quart's test app (>= 10 000 frames); what only a real
socket can carry (invalid UTF-8, RSV1 compressed frames, oversized frames past Hypercorn's
limit, megabyte URLs) runs against ``quartsig serve``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError

from quartsig.access import accounts
from quartsig.app import create_app
from tests.support.measure import rss_kib
from tests.support.scanning import running_standin
from tests.support.stack import Stack, server_stack

KEY = Fernet.generate_key().decode()
MAX_FRAME = 4096

TYPES = {"authed", "subscribed", "unsubscribed", "snapshot", "update", "status", "error", "pong",
         "notice"}
ERROR_CODES = {"bad_json", "bad_op", "bad_symbol", "bad_timeframe", "bad_profile",
               "unknown_symbol", "too_many_subscriptions", "rate_limited", "quota_exceeded",
               "key_limit", "profile_failed"}
CLOSE_CODES = {1000, 1001, 1008, 1009, 1013, 4401, 4403, 4408, 4429}
#: Closes the WebSocket layer itself sends for wire-level violations (protocol.md, Closes).
WIRE_CLOSE_CODES = {1002, 1007, 1009}
#: Hypercorn (wsproto) fails a connection that breaks the framing by dropping the TCP
#: connection without a close frame: recorded as ``None``.
DROPPED = {None}

SYMBOLS = ["EURUSD", "FX_IDC:USDJPY", "binance:btcusdt", "NASDAQ:AAPL", "FX_IDC:NOPE", "X:Y",
           ":", "", "EUR USD", "A" * 70, "FX_IDC:" + "Z" * 40, "ÉURUSD"]
TFS = ["1m", "5m", "15m", "30m", "1h", "2h", "4h", "1d", "1W", "1M", "1D", "2m", "", "1w"]


def check_message(message: Any) -> None:
    assert isinstance(message, dict), message
    assert message.get("type") in TYPES, message
    if message["type"] == "error":
        assert message["code"] in ERROR_CODES, message


def check_frame(text: str | bytes) -> list[dict[str, Any]]:
    assert isinstance(text, str), "server frames are JSON text"
    value = orjson.loads(text)
    messages = value if isinstance(value, list) else [value]
    for message in messages:
        check_message(message)
    return messages


def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= 40 or r.exc_info or "Traceback" in r.getMessage()]


# ------------------------------------------------------------------------------ strategies

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=24),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)
fields = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=2),
)
ids = st.one_of(
    st.integers(-(2**53) + 1, 2**53 - 1), st.integers(-(10**30), 10**30), st.text(max_size=80),
    st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
)
messages = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "SUBSCRIBE", "", "fly"])
     | fields},
    optional={
        "symbol": st.sampled_from(SYMBOLS) | fields,
        "tf": st.sampled_from(TFS) | fields,
        "profile": st.sampled_from(["full", "summary", "nope", "FULL"]) | fields,
        "id": ids,
        "token": st.text(max_size=40),
        "extra": json_values,
    },
)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # NaN/Infinity included: not JSON to orjson


plausible = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe"]), "symbol": st.sampled_from(SYMBOLS),
     "tf": st.sampled_from(TFS)},
    optional={"profile": st.sampled_from(["full", "summary", "nope"]), "id": ids},
)

frames = st.one_of(
    plausible.map(_dump),
    st.lists(plausible, min_size=1, max_size=64).map(_dump),
    messages.map(_dump),
    st.lists(messages, min_size=0, max_size=70).map(_dump),  # empty and over-64 arrays too
    json_values.map(_dump),
    st.integers(1, 4000).map(lambda n: "9" * n),  # huge numbers
    st.integers(1, 400).map(lambda n: '{"op":"ping","id":' + "9" * n + "}"),
    st.sampled_from(["1e999", "-1e999", '{"op":"ping","id":1e400}', '{"op":"ping","id":-0.0}',
                     '{"op":"ping","id":9007199254740992}', "[]", "{}", "null", '"ping"']),
    st.integers(1, 2000).map(lambda n: "[" * n + "]" * n),  # deep nesting
    st.integers(1, 600).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.binary(min_size=1, max_size=300),  # binary (empty ones: on the wire, below)
    st.text(max_size=300),  # arbitrary text
    st.integers(900, 1400).map(lambda n: '{"op":"ping","pad":"' + "\u20ac" * n + '"}'),  # multibyte
    st.integers(MAX_FRAME - 40, MAX_FRAME + 9000).map(  # around and over the frame limit
        lambda n: '{"op":"ping","pad":"' + "x" * n + '"}'),
)


def frame_size(frame: str | bytes) -> int:
    return len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8"))


# --------------------------------------------------------------------------- the test app


class AppUnderFuzz:
    """The app with its lifespan, an in-process stand-in and a token, on a private loop."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.runner = asyncio.Runner()
        self.tmp_path = tmp_path
        self.overrides = overrides
        self.frames = 0
        self.closes: dict[int, int] = {}
        self.answers: dict[str, int] = {}

    def __enter__(self) -> AppUnderFuzz:
        self.runner.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.run(self._stop())
        self.runner.close()

    async def _start(self) -> None:
        self._standin = running_standin()
        standin = await self._standin.__aenter__()
        self.app = create_app(data_dir=self.tmp_path, scanner_url=standin.url, interval=5.0,
                              secret_keys=(KEY,), auth_timeout=2.0, **self.overrides)
        self._test_app = self.app.test_app()
        test_app = await self._test_app.__aenter__()
        await accounts.add(42)
        self.tokens = self.app.extensions["quartsig"].tokens
        self.token = self.tokens.issue(42).token
        self.client = test_app.test_client()

    async def _stop(self) -> None:
        await self._test_app.__aexit__(None, None, None)
        await self._standin.__aexit__(None, None, None)

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)

    async def exercise(self, batch: list[str | bytes]) -> None:
        """Send ``batch`` frame by frame, each followed by a ping to collect its answers;
        after a close (a frame too big, say) connect again and go on with the rest."""
        index = 0
        while index < len(batch):
            index = await self._session(batch, index)

    async def _session(self, batch: list[str | bytes], index: int) -> int:
        async with self.client.websocket(f"/ws?token={self.token}") as ws:
            async with asyncio.timeout(5):
                assert check_frame(await ws.receive())[0]["type"] == "authed"
            for number in range(index, len(batch)):
                frame = batch[number]
                await ws.send(frame)
                self.frames += 1
                if frame_size(frame) > MAX_FRAME:
                    code = await self._closed(ws)
                    assert code == 1009, (code, frame_size(frame))
                    return number + 1
                await ws.send(f'{{"op":"ping","id":"sync-{number}"}}')
                got: list[Any] = []
                async with _explained(frame, got), asyncio.timeout(5):
                    while True:
                        try:
                            answer = check_frame(await ws.receive())
                        except WebsocketDisconnectError as closed:
                            code = closed.args[0]
                            assert code in CLOSE_CODES, code
                            self.closes[code] = self.closes.get(code, 0) + 1
                            return number + 1
                        got.append(answer)
                        for message in answer:
                            key = message.get("code", message["type"])
                            self.answers[key] = self.answers.get(key, 0) + 1
                        if {"type": "pong", "id": f"sync-{number}"} in answer:
                            break
        return len(batch)

    async def _closed(self, ws: Any) -> int:
        async with asyncio.timeout(5):
            while True:
                try:
                    check_frame(await ws.receive())
                except WebsocketDisconnectError as closed:
                    code = int(closed.args[0])
                    self.closes[code] = self.closes.get(code, 0) + 1
                    return code


@contextlib.asynccontextmanager
async def _explained(frame: str | bytes, got: list[Any]) -> AsyncIterator[None]:
    try:
        yield
    except TimeoutError:
        raise AssertionError(f"no answer within 5 s to {frame[:300]!r}; got {got}") from None


@pytest.fixture
def fuzzed(tmp_path: Path) -> Iterator[AppUnderFuzz]:
    # a high op rate so that fuzz frames meet the parser, not just the rate limiter
    with AppUnderFuzz(tmp_path, ops_per_second=1e6) as app:
        yield app


def test_ten_thousand_hostile_frames_get_documented_answers(
    fuzzed: AppUnderFuzz, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    started = time.monotonic()

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(frames, min_size=30, max_size=50))
    def fuzz(batch: list[str | bytes]) -> None:
        fuzzed.run(fuzzed.exercise(batch))

    fuzz()
    elapsed = time.monotonic() - started
    print(f"\nFIGURES fuzz: {fuzzed.frames} frames in {elapsed:.1f}s; answers {fuzzed.answers}; "
          f"closes {fuzzed.closes}")
    assert fuzzed.frames >= 10_000
    assert server_errors(caplog) == []


# ------------------------------------------------------------------------------ tokens


def _tampered(token: str, at: int, char: str) -> str:
    return token[:at] + char + token[at + 1:]


def _token_cases(app: AppUnderFuzz) -> list[tuple[str, str]]:
    valid = app.token
    own = Fernet(KEY.encode())
    other = Fernet(Fernet.generate_key())
    now = int(time.time())
    raw = base64.urlsafe_b64decode(valid)
    flipped = base64.urlsafe_b64encode(raw[:30] + bytes([raw[30] ^ 1]) + raw[31:]).decode()
    return [
        ("tampered byte", flipped),
        ("tampered char", _tampered(valid, len(valid) // 2, "A" if valid[len(valid) // 2] != "A"
                                    else "B")),
        ("truncated by 1", valid[:-1]),
        ("truncated by 4", valid[:-4]),
        ("truncated to half", valid[: len(valid) // 2]),
        ("wrong key", other.encrypt_at_time(b"42", now).decode()),
        ("far future", own.encrypt_at_time(b"42", now + 10**8).decode()),
        ("far past", own.encrypt_at_time(b"42", 1).decode()),
        ("just expired", own.encrypt_at_time(b"42", now - 86400 - 60).decode()),
        ("max timestamp", own.encrypt_at_time(b"42", 2**63 - 1).decode()),
        ("not a number inside", own.encrypt_at_time(b"forty-two", now).decode()),
        ("huge id inside", own.encrypt_at_time(b"9" * 400, now).decode()),
        ("empty", ""),
        ("padding only", "===="),
        ("not base64", "gAAAAA!!!"),
        ("non-ascii", "gAAAAAé" + valid[7:]),
        ("kilobyte", "A" * 1024),
        ("megabyte", "gAAAAA" + "A" * (1 << 20)),
    ]


@pytest.fixture
def app_for_tokens(tmp_path: Path) -> Iterator[AppUnderFuzz]:
    with AppUnderFuzz(tmp_path) as app:
        yield app


async def _auth_close(app: AppUnderFuzz, path: str, first: str | None) -> int:
    async with app.client.websocket(path) as ws:
        if first is not None:
            await ws.send(first)
        async with asyncio.timeout(5):
            while True:
                try:
                    frame = check_frame(await ws.receive())
                except WebsocketDisconnectError as closed:
                    return int(closed.args[0])
                assert frame[0]["type"] != "authed", "a bad token was accepted"


def test_bad_tokens_close_with_4401_or_1009_never_a_crash(
    app_for_tokens: AppUnderFuzz, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    app = app_for_tokens
    seen: dict[str, tuple[int, int]] = {}
    for name, token in _token_cases(app):
        frame = orjson.dumps({"op": "auth", "token": token}).decode()
        by_frame = app.run(_auth_close(app, "/ws", frame))
        by_query = app.run(_auth_close(app, f"/ws?token={quote(token, safe='')}", None))
        seen[name] = (by_frame, by_query)
        assert by_frame == (1009 if len(frame) > MAX_FRAME else 4401), name
        assert by_query == 4401, name

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 10**6), st.sampled_from(alphabet), st.text(alphabet, max_size=200))
    def mutate(at: int, char: str, junk: str) -> None:
        position = at % len(app.token)
        mutated = _tampered(app.token, position, char)
        if mutated != app.token:
            assert app.run(_auth_close(app, f"/ws?token={mutated}", None)) == 4401
        if junk:
            frame = orjson.dumps({"op": "auth", "token": junk}).decode()
            assert app.run(_auth_close(app, "/ws", frame)) == 4401

    mutate()
    print(f"\nFIGURES tokens: {len(seen)} named cases (frame, query) -> {seen}; 300 mutations")
    assert server_errors(caplog) == []


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "http://localhost.evil.example", "https://localhost:1",
     "file://", "https://" + "a" * 3000 + ".example", "chrome-extension://abcdef"],
)
def test_foreign_origins_are_refused_with_403(app_for_tokens: AppUnderFuzz, origin: str) -> None:
    app = app_for_tokens

    async def attempt() -> int:
        async with app.client.websocket(f"/ws?token={app.token}",
                                        headers={"Origin": origin}) as ws:
            with pytest.raises(WebsocketResponseError) as caught:
                await ws.receive()
        return int(caught.value.response.status_code)

    assert app.run(attempt()) == 403


def test_thousands_of_subscriptions_hit_the_limit_not_the_server(tmp_path: Path) -> None:
    """4 096 subscribe ops in 40-op frames: 128 taken, the rest refused; then flooding closes."""
    # The per-account quota of new keys is tested elsewhere (test_abuse_budget): here, the cap.
    with AppUnderFuzz(tmp_path, ops_per_second=1e6, new_keys_per_minute=100_000) as app:
        async def subscribe_all() -> dict[str, int]:
            counts: dict[str, int] = {}
            tfs = ["1m", "5m", "15m", "30m", "1h", "2h", "4h", "1d", "1W", "1M"]
            ops = [{"op": "subscribe", "symbol": f"FX_IDC:S{n:04d}", "tf": tfs[n % 10],
                    "profile": "summary", "id": n} for n in range(4096)]
            async with app.client.websocket(f"/ws?token={app.token}") as ws:
                check_frame(await ws.receive())
                for start in range(0, len(ops), 40):  # a client that reads its answers
                    await ws.send(orjson.dumps(ops[start:start + 40]).decode())
                    await ws.send(f'{{"op":"ping","id":"end-{start}"}}')
                    async with asyncio.timeout(10):
                        while True:
                            answer = check_frame(await ws.receive())
                            for message in answer:
                                key = message.get("code", message["type"])
                                counts[key] = counts.get(key, 0) + 1
                            if {"type": "pong", "id": f"end-{start}"} in answer:
                                break
                return counts

        counts = app.run(subscribe_all())
        state = app.app.extensions["quartsig"]
        # Made-up symbols fetched early come back unknown and free their slot, so more than
        # 128 may be taken over time, never more than 128 held at once.
        held = counts["subscribed"] - counts.get("unknown_symbol", 0)
        assert held == 128, counts
        assert counts["too_many_subscriptions"] == 4096 - counts["subscribed"], counts
        assert not state.hub.subscriptions  # the connection is gone and left nothing behind
        print(f"\nFIGURES many-subscriptions: {counts}")

    with AppUnderFuzz(tmp_path / "limited") as app:  # default 20 ops/s: flooding closes
        async def flood() -> int:
            async with app.client.websocket(f"/ws?token={app.token}") as ws:
                check_frame(await ws.receive())
                for start in range(0, 4096, 40):
                    await ws.send(orjson.dumps([{"op": "subscribe", "symbol": f"S{n}", "tf": "1m"}
                                                for n in range(start, start + 40)]).decode())
                return await AppUnderFuzz._closed(app, ws)

        assert app.run(flood()) == 1008


# ------------------------------------------------------------------- the wire, real server


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with server_stack(tmp_path_factory.mktemp("wire"), QUARTSIG_INTERVAL="1") as stack:
        yield stack


def _handshake(port: int, path: str, extra: str = "", rcvbuf: int | None = None
               ) -> tuple[socket.socket, bytes]:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    _LEFTOVER[sock.fileno()] = rest
    return sock, head


_LEFTOVER: dict[int, bytes] = {}


def _frame(opcode: int, payload: bytes, *, rsv1: bool = False, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _read_until_close(sock: socket.socket, *, until: bytes | None = None
                      ) -> tuple[int | None, list[bytes]]:
    """Server frames until its close frame, EOF or a data frame containing ``until``:
    (close code, data payloads)."""
    buffer, payloads = _LEFTOVER.pop(sock.fileno(), b""), []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        while len(buffer) >= 2:
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            offset = 2
            if size == 126:
                if len(buffer) < 4:
                    break
                size, offset = struct.unpack("!H", buffer[2:4])[0], 4
            elif size == 127:
                if len(buffer) < 10:
                    break
                size, offset = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < offset + size:
                break
            payload, buffer = buffer[offset:offset + size], buffer[offset + size:]
            if opcode == 0x8:
                return (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None,
                        payloads)
            if opcode in (0x1, 0x2):
                payloads.append(payload)
                if until is not None and until in payload:
                    return None, payloads
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None, payloads
        if not chunk:
            return None, payloads
        buffer += chunk
    raise AssertionError("no close within 10 s")


@pytest.mark.e2e
def test_invalid_utf8_binary_and_oversized_frames_on_the_wire(real: Stack) -> None:
    results = {}
    cases = {
        "invalid utf-8 text": (_frame(0x1, b'{"op":"ping","x":"\xff\xfe"}'), DROPPED | {1007}),
        "truncated utf-8 sequence": (_frame(0x1, b'{"op":"ping"}\xe2\x82'), DROPPED | {1007}),
        "binary frame": (_frame(0x2, b"\x00\x01\x02"), None),
        "empty binary frame": (_frame(0x2, b""), None),
        "over the frame limit": (_frame(0x1, b'{"op":"ping","p":"' + b"x" * 5000 + b'"}'), {1009}),
        "over hypercorn's limit": (_frame(0x1, b"x" * 70000), DROPPED | {1009}),
        "reserved opcode": (_frame(0x3, b"hi"), DROPPED | {1002}),
        "length of 2^63-1": (b"\x81\xff" + struct.pack("!Q", 2**63 - 1), DROPPED | {1002, 1009}),
        "unmasked frame": (b"\x81\x05hello", DROPPED | {1002}),
    }
    for name, (payload, expected) in cases.items():
        sock, head = _handshake(real.server.port, f"/ws?token={real.token}")
        assert head.startswith(b"HTTP/1.1 101"), head
        try:
            sock.sendall(payload)
            if expected is None:  # a documented bad_json error, then the connection lives on
                sock.sendall(_frame(0x1, b'{"op":"ping","id":1}'))
            code, frames = _read_until_close(sock, until=b'"pong"')
        finally:
            sock.close()
        texts = [m for f in frames for m in (lambda v: v if isinstance(v, list) else [v])(
            orjson.loads(f))]
        results[name] = (code, texts[1:])
        if expected is None:
            assert {"type": "error", "code": "bad_json", "message": "frames must be JSON text"} \
                in texts, texts
            assert {"type": "pong", "id": 1} in texts
        else:
            assert code in expected, (name, code)
            assert code in CLOSE_CODES | WIRE_CLOSE_CODES | DROPPED
            assert not [t for t in texts if t.get("type") == "pong"], texts
    print(f"\nFIGURES wire: {results}")
    assert "Traceback" not in real.server.log.read_text()


@pytest.mark.e2e
def test_megabyte_token_in_the_url_is_refused_cleanly(real: Stack) -> None:
    sock, head = _handshake(real.server.port, "/ws?token=gAAAAA" + "A" * (1 << 20))
    sock.close()
    status = head.split(b"\r\n", 1)[0]
    assert not status.startswith(b"HTTP/1.1 101") and not status.startswith(b"HTTP/1.1 5"), status
    sock, head = _handshake(real.server.port, f"/ws?token={real.token}")
    assert head.startswith(b"HTTP/1.1 101")  # the server is fine
    sock.close()
    print(f"\nFIGURES megabyte-url: {status!r}")


@pytest.mark.e2e
def test_a_compression_bomb_is_refused_and_memory_is_unaffected(real: Stack) -> None:
    import zlib

    pid = real.server.process.pid  # type: ignore[union-attr]
    before = rss_kib(pid)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b" " * (256 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    payload = payload[:-4]  # permessage-deflate drops the sync flush's tail
    outcomes = []
    for _ in range(5):
        sock, head = _handshake(
            real.server.port, f"/ws?token={real.token}",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"permessage-deflate" not in head.lower()  # declined
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(_frame(0x1, payload, rsv1=True))
        code, _ = _read_until_close(sock)
        sock.close()
        outcomes.append(code)
    after = rss_kib(pid)
    print(f"\nFIGURES bomb: {len(payload)} bytes inflating to 256 MiB x5 -> closes {outcomes}; "
          f"RSS {before} -> {after} KiB")
    assert all(code in DROPPED | {1002} for code in outcomes), outcomes
    assert after - before < 20 * 1024
