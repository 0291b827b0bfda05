"""quartsig.hosting: Hypercorn's gaps closed on every launch path, pinned and checked by name.

The tests named ``test_hypercorn_still_has[...]`` fail, naming the attribute, when an
upgraded Hypercorn no longer has what quartsig replaces: read the new Hypercorn's
``protocol/ws_stream.py`` before widening the pin in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from quartsig import hosting
from quartsig.config import ConfigError, Settings
from tests.support.clocks import ManualClock
from tests.support.net import free_port, http, wait_until
from tests.support.processes import quartsig_cli, quartsig_env

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
REQUIREMENTS = {
    Requirement(line).name.lower(): Requirement(line)
    for line in PYPROJECT["project"]["dependencies"]
}


@pytest.mark.parametrize(("name", "parameters"), list(hosting.PATCHED.items()),
                         ids=list(hosting.PATCHED))
def test_hypercorn_still_has(name: str, parameters: tuple[str, ...] | None) -> None:
    target = hosting.resolve(name)  # AttributeError/ImportError names what is gone
    if parameters is not None:
        assert tuple(inspect.signature(target).parameters) == parameters, name


def test_the_installed_hypercorn_has_everything_the_subclass_relies_on() -> None:
    assert hosting.missing() == []


def test_the_pin_is_the_range_that_was_read_and_the_installed_hypercorn_is_in_it() -> None:
    pinned = REQUIREMENTS["hypercorn"].specifier
    assert str(pinned) == str(Requirement(f"hypercorn{hosting.HYPERCORN_VERSIONS}").specifier)
    assert Version(metadata.version("hypercorn")) in pinned
    assert Version("0.19.0") not in pinned  # a ceiling: upgrades are read first


class _App:
    """An ASGI app as far as the limits care: something to key them by."""


class _Wrapper:
    """Hypercorn's ``ASGIWrapper``: the app is its ``app``."""

    def __init__(self, app: object) -> None:
        self.app = app


def test_harden_installs_the_subclass_where_hypercorn_builds_streams_and_nothing_else() -> None:
    from hypercorn.protocol import h2, h11, ws_stream

    own = (ws_stream.WSStream.__init__, ws_stream.WSStream.handle, ws_stream.WSStream._accept,
           ws_stream.WSStream._send_pings, ws_stream.WebsocketBuffer.extend,
           ws_stream.PerMessageDeflate)
    hosting.harden(_App(), Settings.from_env({}))
    hosting.harden(_App(), Settings.from_env({}))
    assert h11.WSStream is hosting.Stream and h2.WSStream is hosting.Stream
    assert hosting.Stream.__bases__ == (ws_stream.WSStream,)
    # Hypercorn's own classes are untouched: nothing wrapped, nothing swapped.
    assert (ws_stream.WSStream.__init__, ws_stream.WSStream.handle, ws_stream.WSStream._accept,
            ws_stream.WSStream._send_pings, ws_stream.WebsocketBuffer.extend,
            ws_stream.PerMessageDeflate) == own
    for method in own[:-1]:
        assert method.__module__ == "hypercorn.protocol.ws_stream"
        assert not hasattr(method, "__wrapped__")


def test_harden_refuses_a_hypercorn_that_lost_what_is_patched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(hosting.PATCHED, "hypercorn.protocol.ws_stream.WSStream._gone", None)
    monkeypatch.setitem(hosting.PATCHED, "hypercorn.protocol.ws_stream.WSStream.handle",
                        ("self", "event", "extra"))
    with pytest.raises(ConfigError) as error:
        hosting.harden(_App(), Settings.from_env({}))
    message = str(error.value)
    assert "WSStream._gone is gone" in message
    assert "WSStream.handle" in message and "hypercorn>=0.18,<0.19" in message


def test_each_app_keeps_its_own_limits() -> None:
    """They were process-global: the last app's settings won, for every app's streams."""
    from hypercorn.config import Config

    small, plain = _App(), _App()
    hosting.harden(small, Settings.from_env({}, heartbeat_interval=7.0, heartbeat_timeout=2.0,
                                            max_frame_bytes=1000))
    hosting.harden(plain, Settings.from_env({}))
    assert hosting.limits_of(_Wrapper(small)) == hosting.StreamLimits(7.0, 2.0, 4000)
    assert hosting.limits_of(_Wrapper(plain)) == hosting.StreamLimits(25.0, 10.0, 4 * 4096)
    assert hosting.limits_of(_Wrapper(_App())) is None  # not ours: Hypercorn's own settings
    config = Config()  # as `hypercorn -c hypercorn.toml` builds it: no ping, 16 MiB
    derived = hosting.StreamLimits(7.0, 2.0, 4000).config_for(config)
    assert (derived.websocket_ping_interval, derived.websocket_max_message_size) == (7.0, 4000)
    assert hosting.StreamLimits(7.0, 2.0, 4000).config_for(config) is derived
    assert config.websocket_ping_interval is None  # the original is left alone
    # `quartsig serve` writes the same rule into its config: never above Hypercorn's own cap.
    config.websocket_max_message_size = 1000
    assert hosting.StreamLimits(7.0, 2.0, 4000).apply(config).websocket_max_message_size == 1000


def test_the_buffer_refuses_a_fragment_past_the_cap_before_storing_it() -> None:
    from hypercorn.protocol.ws_stream import FrameTooLargeError
    from wsproto.events import TextMessage

    buffer = hosting.CappedBuffer(10)
    buffer.extend(TextMessage(data="x" * 6, message_finished=False))
    with pytest.raises(FrameTooLargeError):
        buffer.extend(TextMessage(data="y" * 6, message_finished=False))
    assert buffer.length == 6 and buffer.value is not None
    assert buffer.value.getvalue() == "x" * 6  # nothing of the refused fragment stored


@pytest.mark.parametrize(
    ("package", "floor"),
    [
        ("aiohttp", "3.14.4"),
        ("orjson", "3.9.15"),
        ("h11", "0.16"),
        ("cryptography", "44.0.1"),
        ("tortoise-orm", "1.0"),
        ("hypercorn", "0.18"),
        ("werkzeug", "3.1.4"),
        ("h2", "4.3.0"),
    ],
)
def test_dependency_floors_are_past_the_known_advisories(package: str, floor: str) -> None:
    """Issue 14, finding 12: no version the floor admits has a known advisory."""
    specifier = REQUIREMENTS[package].specifier
    below = Version(floor).release
    just_below = Version(".".join(map(str, [*below[:-1], below[-1] - 1])) if below[-1] else "0")
    assert just_below not in specifier, f"{package}{specifier} admits {just_below}"
    assert Version(floor) in specifier


# ==================================================== e2e: `hypercorn -c hypercorn.toml ...`


@dataclass
class DirectHypercorn:
    """``hypercorn -c hypercorn.toml 'quartsig.app:create_app()'``, as the README documents."""

    process: subprocess.Popen[bytes]
    port: int
    token: str

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[DirectHypercorn]:
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9",
                       QUARTSIG_HEARTBEAT_INTERVAL="1", QUARTSIG_HEARTBEAT_TIMEOUT="0.5",
                       QUARTSIG_AUTH_TIMEOUT="60")
    quartsig_cli(env, "account", "add", "42")
    token = quartsig_cli(env, "token", "issue", "42").strip()
    port = free_port()
    log = tmp_path / "hypercorn.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "-c", "hypercorn.toml",
             "--bind", f"127.0.0.1:{port}", "quartsig.app:create_app()"],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"hypercorn exited:\n{log.read_text()}")
            return http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200

        wait_until(ready, 30, what="hypercorn /healthz")
        yield DirectHypercorn(process, port, token)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.mark.e2e
async def test_direct_hypercorn_declines_permessage_deflate(direct: DirectHypercorn) -> None:
    async with connect(direct.ws_url, ping_interval=None) as ws:  # offers deflate by default
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws.send(orjson.dumps({"op": "auth", "token": direct.token}).decode())
        assert orjson.loads(await ws.recv()) == {"type": "authed", "tg_id": 42}


@pytest.mark.e2e
async def test_direct_hypercorn_caps_a_message_before_auth(direct: DirectHypercorn) -> None:
    """quartsig's cap (4 x 4096) under hypercorn.toml's 65536: Hypercorn answers 1009."""
    async with connect(direct.ws_url, ping_interval=None, max_size=None) as ws:
        await ws.send("x" * 20_000)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert closed.value.rcvd.reason == ""  # Hypercorn's close: the app never buffered it


@pytest.mark.e2e
async def test_direct_hypercorn_drops_a_silent_peer_and_keeps_a_live_one(
    direct: DirectHypercorn,
) -> None:
    """Pings every second, a 0.5 s deadline: a peer that never answers is dropped long
    before its 60 s auth deadline; a client whose library answers pings stays."""
    live = await connect(direct.ws_url, ping_interval=None)  # the library still answers pings
    await live.send(orjson.dumps({"op": "auth", "token": direct.token}).decode())
    assert orjson.loads(await live.recv())["type"] == "authed"
    reader, writer = await asyncio.open_connection("127.0.0.1", direct.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    received = b""
    # Bounded well below the 60 s auth deadline, so only the heartbeat can end this read.
    async with asyncio.timeout(40):  # read what comes (pings), answer nothing, until EOF
        while chunk := await reader.read(4096):
            received += chunk
    writer.close()
    opcodes = _server_opcodes(received)
    assert 0x9 in opcodes  # pinged,
    assert 0x8 not in opcodes  # then dropped without a close: a dead peer, not a refusal
    await live.send(orjson.dumps({"op": "ping", "id": "alive"}).decode())
    assert orjson.loads(await asyncio.wait_for(live.recv(), 5)) == {"type": "pong", "id": "alive"}
    await live.close()


def _server_opcodes(data: bytes) -> list[int]:
    """The opcodes of a run of unmasked server frames (short ones: pings, closes)."""
    opcodes, at = [], 0
    while at + 2 <= len(data):
        size = data[at + 1] & 0x7F
        assert size < 126, "only short frames expected"
        opcodes.append(data[at] & 0x0F)
        at += 2 + size
    return opcodes


# ==================================================== direct sends on a real WSStream


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_frame_text_is_wsprotos_frame_byte_for_byte(size: int) -> None:
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    text = "é" * (size // 4) + "x" * (size - 2 * (size // 4))  # ``size`` bytes, some 2-byte
    assert len(text.encode()) == size
    wsproto_bytes = Connection(ConnectionType.SERVER).send(TextMessage(data=text))
    assert hosting.frame_text(text) == wsproto_bytes


class _TaskGroup:
    """What ``WSStream.handle`` needs of Hypercorn's task group: the app is not run."""

    async def spawn_app(self, *args: object) -> object:
        async def put(message: object) -> None:
            pass

        return put

    def spawn(self, *args: object) -> None:
        pass


async def _accepted_stream(sent: list[object], app: object | None = None) -> Any:
    """A stream as Hypercorn's HTTP/1.1 protocol builds it, for a client offering deflate."""
    from hypercorn.config import Config
    from hypercorn.protocol import h11
    from hypercorn.protocol.events import Request
    from hypercorn.typing import ConnectionState

    if app is None:
        app = _App()
        hosting.harden(app, Settings.from_env({}))

    async def send(event: object) -> None:
        sent.append(event)

    stream = h11.WSStream(_Wrapper(app), Config(), object(), _TaskGroup(), False, None, None,  # type: ignore[arg-type]
                          send, 1)
    await stream.handle(Request(
        stream_id=1, http_version="1.1", method="GET", raw_path=b"/ws",
        state=ConnectionState({}), headers=[
            (b"host", b"x"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
        ],
    ))  # fmt: skip
    await stream.app_send({"type": "websocket.accept", "subprotocol": None, "headers": []})
    return stream


async def test_a_stream_declines_permessage_deflate() -> None:
    from hypercorn.protocol.events import Response

    sent: list[object] = []
    await _accepted_stream(sent)
    response = next(event for event in sent if isinstance(event, Response))
    assert response.status_code == 101
    assert b"sec-websocket-extensions" not in dict(response.headers)


async def test_a_stream_serves_its_app_with_that_apps_limits() -> None:
    small, plain = _App(), _App()
    hosting.harden(small, Settings.from_env({}, heartbeat_interval=7.0, heartbeat_timeout=2.0,
                                            max_frame_bytes=1000))
    hosting.harden(plain, Settings.from_env({}))
    first: Any = await _accepted_stream([], small)
    second: Any = await _accepted_stream([], plain)
    assert (first.config.websocket_ping_interval, first.buffer.max_length) == (7.0, 4000)
    assert (second.config.websocket_ping_interval, second.buffer.max_length) == (25.0, 16384)
    assert isinstance(first.buffer, hosting.CappedBuffer)


async def test_an_accepted_stream_offers_its_own_send_and_it_writes_wsprotos_bytes() -> None:
    """Fails by name if Hypercorn's WSStream loses an attribute the direct send reads."""
    from hypercorn.protocol.events import Data
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    sent: list[object] = []
    stream: Any = await _accepted_stream(sent)
    assert stream.scope["extensions"][hosting.SEND_EXTENSION] is stream
    fallback: list[str] = []

    async def quart_send(text: str) -> None:
        fallback.append(text)

    send = hosting.text_sender(stream.scope, quart_send)
    sent.clear()
    await send('{"type":"update","€":1}')
    expected = Connection(ConnectionType.SERVER).send(TextMessage(data='{"type":"update","€":1}'))
    assert sent == [Data(stream_id=stream.stream_id, data=expected)] and fallback == []
    # Through Hypercorn's own path, byte for byte the same.
    sent.clear()
    await stream.app_send({"type": "websocket.send", "bytes": None,
                           "text": '{"type":"update","€":1}'})  # fmt: skip
    assert sent == [Data(stream_id=stream.stream_id, data=expected)]


async def test_a_closing_stream_gets_hypercorns_own_send() -> None:
    """After the client's close frame (wsproto answered it) nothing more is framed here."""
    from hypercorn.protocol.events import Data

    sent: list[object] = []
    stream: Any = await _accepted_stream(sent)
    fallback: list[str] = []

    async def quart_send(text: str) -> None:
        fallback.append(text)

    send = hosting.text_sender(stream.scope, quart_send)
    close = bytes((0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2))  # masked close 1000
    await stream.handle(Data(stream_id=1, data=close))
    sent.clear()
    await send("late")
    assert fallback == ["late"] and sent == []


def test_without_the_server_offer_the_sender_is_quarts_own() -> None:
    async def quart_send(text: str) -> None:
        pass

    assert hosting.text_sender({"type": "websocket", "extensions": {}}, quart_send) is quart_send
    assert hosting.text_sender({"type": "websocket"}, quart_send) is quart_send


# ==================================================== the shared heartbeat


class _Stream:
    """What the heartbeat reads of a stream (:class:`hosting.Stream`)."""

    heard = float("-inf")

    def __init__(self, clock: ManualClock, interval: float,
                 limits: hosting.StreamLimits | None) -> None:
        from types import SimpleNamespace

        self.config = SimpleNamespace(websocket_ping_interval=interval)
        self.limits = limits
        self.closed = False
        self.stream_id = 1
        self.clock = clock
        self.answer: Callable[[], None] | None = None
        self.pings: list[float] = []
        self.sent: list[object] = []

    async def _send_wsproto_event(self, event: object) -> None:
        self.pings.append(self.clock.time())
        if self.answer is not None:
            self.answer()

    async def send(self, event: object) -> None:
        self.sent.append(event)
        self.closed = True


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def beat(clock: ManualClock) -> hosting.Heartbeat:
    return hosting.Heartbeat(asyncio.get_running_loop(), clock=clock)


def _limits(interval: float, timeout: float) -> hosting.StreamLimits:
    return hosting.StreamLimits(interval, timeout, 4096)


async def _first_ping(clock: ManualClock, stream: _Stream, interval: float) -> float:
    """Time moved until the stream's first ping, at a random point of its first interval."""
    started = clock.time()
    while not stream.pings:
        assert clock.time() <= started + interval, "no ping within the first interval"
        await clock.advance(0.001)
    return stream.pings[0]


def _gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def test_the_heartbeat_pings_a_live_stream_every_interval_and_keeps_it(
    beat: hosting.Heartbeat, clock: ManualClock,
) -> None:
    live = _Stream(clock, 2.0, _limits(2.0, 1.0))
    live.answer = lambda: beat.hear(live)  # the pong, as the stream's handle records it
    beat.add(live)
    first = await _first_ping(clock, live, 2.0)  # at a random point of the first interval
    await clock.advance(first + 10.0 - clock.time() + 0.001)
    assert live.sent == [] and not live.closed
    assert len(live.pings) == 6
    assert all(gap == pytest.approx(2.0, abs=0.02) for gap in _gaps(live.pings)), live.pings


async def test_the_heartbeat_closes_a_stream_that_sends_nothing_after_a_ping(
    beat: hosting.Heartbeat, clock: ManualClock,
) -> None:
    from hypercorn.protocol.events import StreamClosed

    silent = _Stream(clock, 2.0, _limits(2.0, 1.0))
    beat.add(silent)
    pinged = await _first_ping(clock, silent, 2.0)
    assert silent.sent == []
    await clock.advance(pinged + 0.9 - clock.time())
    assert silent.sent == []  # within its deadline
    await clock.advance(0.2)
    assert silent.sent == [StreamClosed(stream_id=1)]  # past it: gone
    await clock.advance(10.0)
    assert len(silent.pings) == 1 and len(beat) == 0  # nothing left of it


async def test_a_peer_heard_from_before_the_ping_does_not_answer_it(
    beat: hosting.Heartbeat, clock: ManualClock,
) -> None:
    from hypercorn.protocol.events import StreamClosed

    chatty_once = _Stream(clock, 2.0, _limits(2.0, 1.0))
    beat.hear(chatty_once)  # a message, then silence
    beat.add(chatty_once)
    await clock.advance(3.1)
    assert chatty_once.sent == [StreamClosed(stream_id=1)]


async def test_the_heartbeat_forgets_a_closed_stream_and_does_not_keep_it_alive(
    beat: hosting.Heartbeat, clock: ManualClock,
) -> None:
    import gc
    import weakref

    closed, gone = _Stream(clock, 1.0, _limits(1.0, 0.5)), _Stream(clock, 1.0, _limits(1.0, 0.5))
    beat.add(closed)
    beat.add(gone)
    closed.closed = True
    ref = weakref.ref(gone)
    del gone
    gc.collect()
    assert ref() is None  # the heap holds streams weakly
    await clock.advance(3.0)
    assert closed.pings == [] and len(beat) == 0 and clock.pending == 0


async def test_a_stream_without_quartsig_limits_gets_plain_pings(
    beat: hosting.Heartbeat, clock: ManualClock,
) -> None:
    plain = _Stream(clock, 1.0, None)
    beat.add(plain)
    await clock.advance(5.0)
    assert len(plain.pings) in (4, 5) and plain.sent == []  # never dropped: no deadline known
    assert all(gap == pytest.approx(1.0, abs=0.02) for gap in _gaps(plain.pings))


async def test_the_heartbeat_closes_a_stream_whose_ping_cannot_be_written(
    beat: hosting.Heartbeat, clock: ManualClock,
) -> None:
    """A peer that reads nothing fills its socket: the ping waits for the drain. It is gone
    as surely as a silent one, even if it still sends (no read timeout is left to catch it)."""
    from hypercorn.protocol.events import StreamClosed

    full = _Stream(clock, 1.0, _limits(1.0, 0.5))
    writing = asyncio.Event()

    async def never_drains(event: object) -> None:
        writing.set()
        beat.hear(full)  # it still talks
        await asyncio.Event().wait()

    full._send_wsproto_event = never_drains  # type: ignore[method-assign]
    beat.add(full)
    started = clock.time()
    while not writing.is_set():
        assert clock.time() <= started + 1.0, "no ping within the first interval"
        await clock.advance(0.001)
    await clock.advance(0.45)
    assert full.sent == []  # within its deadline
    await clock.advance(0.1)
    assert full.sent == [StreamClosed(stream_id=1)]


async def test_a_stream_that_raises_in_its_turn_stops_nobody_elses_pings(
    beat: hosting.Heartbeat, clock: ManualClock,
) -> None:
    """The heartbeat is one timer callback for every stream: a callback that dies would stop
    every connection's pings for good and nothing would say so. The broken stream is logged,
    counted and dropped; the timer goes on for the others."""
    broken, live = _Stream(clock, 1.0, _limits(1.0, 0.5)), _Stream(clock, 1.0, _limits(1.0, 0.5))
    live.answer = lambda: beat.hear(live)

    def raises(event: object) -> None:
        raise RuntimeError("a bug in one stream")

    broken._send_wsproto_event = raises  # type: ignore[assignment,method-assign]
    beat.add(broken)
    beat.add(live)
    await clock.advance(6.0)
    assert len(live.pings) >= 5 and not live.closed
    assert beat.failures == 1
    assert len(beat) == 1  # the live one; the broken one is out of the heap
