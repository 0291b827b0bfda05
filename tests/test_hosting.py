"""quartsig.hosting: Hypercorn's gaps closed on every launch path, pinned and checked by name.

The tests named ``test_hypercorn_still_has[...]`` fail, naming the attribute, when an
upgraded Hypercorn no longer has what quartsig replaces: read the new Hypercorn's
``protocol/ws_stream.py`` before widening the pin in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
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
    target = hosting._resolve(name)  # AttributeError/ImportError names what is gone
    if parameters is not None:
        assert tuple(inspect.signature(target).parameters) == parameters, name


def test_hypercorn_still_builds_permessage_deflate_in_the_handshake() -> None:
    from hypercorn.protocol.ws_stream import Handshake

    # decline_permessage_deflate replaces the class this line looks up at call time.
    assert "PerMessageDeflate()" in inspect.getsource(Handshake.accept)
    assert hosting.missing() == []


def test_the_pin_is_the_range_that_was_read_and_the_installed_hypercorn_is_in_it() -> None:
    pinned = REQUIREMENTS["hypercorn"].specifier
    assert str(pinned) == str(Requirement(f"hypercorn{hosting.HYPERCORN_VERSIONS}").specifier)
    assert Version(metadata.version("hypercorn")) in pinned
    assert Version("0.19.0") not in pinned  # a ceiling: upgrades are read first


def test_harden_is_idempotent_and_wraps_each_internal_once() -> None:
    from hypercorn.protocol.ws_stream import WebsocketBuffer, WSStream

    settings = Settings.from_env({})
    hosting.harden(settings)
    first = (WSStream.__init__, WSStream.handle, WSStream._send_pings, WebsocketBuffer.extend)
    hosting.harden(settings)
    assert (WSStream.__init__, WSStream.handle, WSStream._send_pings,
            WebsocketBuffer.extend) == first
    for wrapper in first:  # one layer over Hypercorn's own function, not a wrapper of one
        assert not hasattr(inspect.unwrap(wrapper), "__wrapped__")
        assert inspect.unwrap(wrapper).__module__ == "hypercorn.protocol.ws_stream"


def test_harden_refuses_a_hypercorn_that_lost_what_is_patched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(hosting.PATCHED, "hypercorn.protocol.ws_stream.WSStream._gone", None)
    monkeypatch.setitem(hosting.PATCHED, "hypercorn.protocol.ws_stream.WSStream.handle",
                        ("self", "event", "extra"))
    with pytest.raises(ConfigError) as error:
        hosting.harden(Settings.from_env({}))
    message = str(error.value)
    assert "WSStream._gone is gone" in message
    assert "WSStream.handle" in message and "hypercorn>=0.18,<0.19" in message


def test_each_stream_gets_quartsigs_ping_interval_and_message_cap() -> None:
    from hypercorn.config import Config

    hosting.harden(Settings.from_env({}, heartbeat_interval=7.0, heartbeat_timeout=2.0,
                                     max_frame_bytes=1000))
    config = Config()  # as `hypercorn -c hypercorn.toml` builds it: no ping, 16 MiB
    derived = hosting.stream_config(config)
    assert (derived.websocket_ping_interval, derived.websocket_max_message_size) == (7.0, 4000)
    assert hosting.stream_config(config) is derived
    assert config.websocket_ping_interval is None  # the original is left alone
    hosting.harden(Settings.from_env({}))
    assert hosting.stream_config(config).websocket_ping_interval == 25.0


@pytest.mark.parametrize(
    ("package", "floor"),
    [
        ("aiohttp", "3.14.4"),
        ("orjson", "3.9.15"),
        ("h11", "0.16"),
        ("cryptography", "44.0.1"),
        ("tortoise-orm", "1.0"),
        ("hypercorn", "0.18"),
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
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(30):  # read what comes (pings), answer nothing, until EOF
        while await reader.read(4096):
            pass
    dropped_after = loop.time() - started
    writer.close()
    assert dropped_after < 30
    await live.send(orjson.dumps({"op": "ping", "id": "alive"}).decode())
    assert orjson.loads(await asyncio.wait_for(live.recv(), 5)) == {"type": "pong", "id": "alive"}
    await live.close()


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


async def _accepted_stream(sent: list[object]) -> object:
    from hypercorn.config import Config
    from hypercorn.protocol.events import Request
    from hypercorn.protocol.ws_stream import WSStream
    from hypercorn.typing import ConnectionState

    hosting.harden(Settings.from_env({}))

    async def send(event: object) -> None:
        sent.append(event)

    stream = WSStream(object(), Config(), object(), _TaskGroup(), False, None, None,  # type: ignore[arg-type]
                      send, 1)
    await stream.handle(Request(
        stream_id=1, http_version="1.1", method="GET", raw_path=b"/ws",
        state=ConnectionState({}), headers=[
            (b"host", b"x"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"sec-websocket-version", b"13"),
        ],
    ))  # fmt: skip
    await stream.app_send({"type": "websocket.accept", "subprotocol": None, "headers": []})
    return stream


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
    """What the heartbeat reads of a Hypercorn ``WSStream``."""

    def __init__(self, interval: float, limits: hosting.StreamLimits | None,
                 answers: bool = True) -> None:
        from types import SimpleNamespace

        self.config = SimpleNamespace(websocket_ping_interval=interval)
        if limits is not None:
            self.config._quartsig_limits = limits
        self.closed = False
        self.stream_id = 1
        self.answers = answers
        self.pings: list[float] = []
        self.sent: list[object] = []

    async def _send_wsproto_event(self, event: object) -> None:
        loop = asyncio.get_running_loop()
        self.pings.append(loop.time())
        if self.answers:  # the pong, as handle() would record it
            loop.call_later(0.01, lambda: self.__dict__.__setitem__("_quartsig_heard",
                                                                    loop.time()))

    async def send(self, event: object) -> None:
        self.sent.append(event)
        self.closed = True


def _limits(interval: float, timeout: float) -> hosting.StreamLimits:
    return hosting.StreamLimits(interval, timeout, 4096)


async def test_the_heartbeat_pings_a_live_stream_every_interval_and_keeps_it() -> None:
    hosting.harden(Settings.from_env({}))
    loop = asyncio.get_running_loop()
    beat = hosting.Heartbeat(loop)
    live = _Stream(0.2, _limits(0.2, 0.1))
    started = loop.time()
    beat.add(live)
    await asyncio.sleep(1.0)
    assert live.sent == [] and not live.closed
    assert 4 <= len(live.pings) <= 6
    assert live.pings[0] - started <= 0.2 + 0.05  # first at a random point of the interval
    gaps = [b - a for a, b in zip(live.pings, live.pings[1:], strict=False)]
    assert all(0.15 < gap < 0.3 for gap in gaps), gaps


async def test_the_heartbeat_closes_a_stream_that_sends_nothing_after_a_ping() -> None:
    from hypercorn.protocol.events import StreamClosed

    hosting.harden(Settings.from_env({}))
    loop = asyncio.get_running_loop()
    beat = hosting.Heartbeat(loop)
    silent = _Stream(0.2, _limits(0.2, 0.1), answers=False)
    beat.add(silent)
    await asyncio.sleep(0.5)
    assert len(silent.pings) == 1
    assert silent.sent == [StreamClosed(stream_id=1)]
    assert silent.pings[0] + 0.1 <= loop.time()
    assert len(beat) == 0  # nothing left of it


async def test_the_heartbeat_forgets_a_closed_stream_and_does_not_keep_it_alive() -> None:
    import gc
    import weakref

    hosting.harden(Settings.from_env({}))
    beat = hosting.Heartbeat(asyncio.get_running_loop())
    closed, gone = _Stream(0.1, _limits(0.1, 0.05)), _Stream(0.1, _limits(0.1, 0.05))
    beat.add(closed)
    beat.add(gone)
    closed.closed = True
    ref = weakref.ref(gone)
    del gone
    gc.collect()
    assert ref() is None  # the heap holds streams weakly
    await asyncio.sleep(0.3)
    assert closed.pings == [] and len(beat) == 0


async def test_a_stream_without_quartsig_limits_gets_plain_pings() -> None:
    hosting.harden(Settings.from_env({}))
    beat = hosting.Heartbeat(asyncio.get_running_loop())
    plain = _Stream(0.1, None, answers=False)
    beat.add(plain)
    await asyncio.sleep(0.45)
    assert len(plain.pings) >= 3 and plain.sent == []  # never dropped: no deadline known


async def test_the_heartbeat_closes_a_stream_whose_ping_cannot_be_written() -> None:
    """A peer that reads nothing fills its socket: the ping waits for the drain. It is gone
    as surely as a silent one (and no read timeout is left to catch it)."""
    from hypercorn.protocol.events import StreamClosed

    hosting.harden(Settings.from_env({}))
    beat = hosting.Heartbeat(asyncio.get_running_loop())
    full = _Stream(0.1, _limits(0.1, 0.1))

    async def never_drains(event: object) -> None:
        await asyncio.Event().wait()

    full._send_wsproto_event = never_drains  # type: ignore[method-assign]
    beat.add(full)
    await asyncio.sleep(0.4)
    assert full.sent == [StreamClosed(stream_id=1)]
