"""The closing handshake (issue 14, finding 10): a client that pipelines frames behind its
auth still reads the close code and reason, because the server waits (bounded) for the
client's close frame before it drops TCP.

Dropping TCP while the client's next frame sits unread in the server's socket makes the
kernel send a reset, and a reset can destroy the close frame on its way: the client sees
1006 and, not knowing its token is bad, retries forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.utilities import LocalProtocolError

from tests.support.processes import QuartsigServer, quartsig_env

pytestmark = pytest.mark.e2e

RUNS = 200
BATCH = 20
SUBSCRIBE = orjson.dumps({"op": "subscribe", "symbol": "EURUSD", "tf": "1d",
                          "profile": "full"}).decode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[QuartsigServer]:
    env = quartsig_env(tmp_path / "data", "http://127.0.0.1:9")
    with QuartsigServer.start(env, tmp_path) as running:
        yield running


async def _aiohttp_pipelined(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """The issue's client: aiohttp, ``?token=``, a subscribe right behind the handshake."""
    ws = await session.ws_connect(f"{url}?token=not-a-token", autoping=False,
                                  timeout=aiohttp.ClientWSTimeout(ws_close=10))
    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
        for _ in range(3):
            await ws.send_str(SUBSCRIBE)
    message = await ws.receive(timeout=10)
    await ws.close()
    if message.type is aiohttp.WSMsgType.CLOSE:
        return int(message.data), str(message.extra or "")
    return ws.close_code or 1006, f"{message.type.name}: {message.data!r}"


async def _raw_pipelined(port: int, *, auth_frame: bool = False) -> tuple[int, str]:
    """A client that reads only when it gets round to it (a busy browser tab): its frames
    are sent before it reads anything after the 101, so the server's close frame waits in
    the client's kernel buffer, where a reset from the server destroys it."""
    loop = asyncio.get_running_loop()
    ws = WSConnection(ConnectionType.CLIENT)
    target = "/ws" if auth_frame else "/ws?token=not-a-token"
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, ws.send(Request(host="127.0.0.1", target=target)))
        head = b""
        while b"\r\n\r\n" not in head:  # read the 101 and not one byte more
            await asyncio.sleep(0)
            with contextlib.suppress(BlockingIOError):
                head = sock.recv(4096, socket.MSG_PEEK)
        ws.receive_data(await loop.sock_recv(sock, head.index(b"\r\n\r\n") + 4))
        assert any(isinstance(event, AcceptConnection) for event in ws.events())
        frames = [TextMessage(SUBSCRIBE)] * 3
        if auth_frame:
            frames.insert(0, TextMessage(orjson.dumps({"op": "auth", "token": "bad"}).decode()))
        with contextlib.suppress(ConnectionError):
            await loop.sock_sendall(sock, b"".join(ws.send(frame) for frame in frames))
        await asyncio.sleep(0.05)  # busy elsewhere; the server decides meanwhile
        closed: tuple[int, str] | None = None
        while True:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
            except ConnectionResetError:
                data = b""
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, CloseConnection) and closed is None:
                    closed = (event.code, event.reason)
                    with contextlib.suppress(ConnectionError, LocalProtocolError):
                        await loop.sock_sendall(sock, ws.send(event.response()))
            if not data:
                return closed or (1006, "no close frame: the connection was dropped")


async def _runs(make: Callable[[], Awaitable[tuple[int, str]]]) -> list[tuple[int, str]]:
    """``RUNS`` closes, ``BATCH`` at a time (concurrent, so the test stays fast)."""
    seen: list[tuple[int, str]] = []
    for _ in range(RUNS // BATCH):
        seen += await asyncio.gather(*(make() for _ in range(BATCH)))
    return seen


def _wrong(seen: list[tuple[int, str]], expected: tuple[int, str]) -> str:
    wrong = [close for close in seen if close != expected]
    return f"{len(wrong)} of {len(seen)} did not read {expected}: {wrong[:3]}" if wrong else ""


async def test_a_client_reading_late_reads_4401_in_200_runs_of_200(
    server: QuartsigServer,
) -> None:
    seen = await _runs(lambda: _raw_pipelined(server.port))
    assert not _wrong(seen, (4401, "bad token")), _wrong(seen, (4401, "bad token"))


async def test_a_bad_auth_frame_with_frames_behind_it_reads_4401_every_time(
    server: QuartsigServer,
) -> None:
    seen = await _runs(lambda: _raw_pipelined(server.port, auth_frame=True))
    assert not _wrong(seen, (4401, "bad token")), _wrong(seen, (4401, "bad token"))


async def test_an_aiohttp_client_subscribing_at_once_reads_4401_every_time(
    server: QuartsigServer,
) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=BATCH)) as session:
        seen = await _runs(lambda: _aiohttp_pipelined(session, url))
    assert not _wrong(seen, (4401, "bad token")), _wrong(seen, (4401, "bad token"))


async def _handshake(port: int, target: str) -> tuple[socket.socket, WSConnection]:
    loop = asyncio.get_running_loop()
    ws = WSConnection(ConnectionType.CLIENT)
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, ws.send(Request(host="127.0.0.1", target=target)))
    return sock, ws


async def _until_close_frame(sock: socket.socket, ws: WSConnection) -> tuple[int, str, bool]:
    """Read up to the server's close frame: (code, reason, whether EOF came with it)."""
    loop = asyncio.get_running_loop()
    while True:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, CloseConnection):
                eof = not data
                return event.code, event.reason, eof
        if not data:
            return 1006, "", True


async def _eof_within(sock: socket.socket, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            while await loop.sock_recv(sock, 65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def test_the_server_waits_for_the_clients_close_frame_before_dropping_tcp(
    server: QuartsigServer,
) -> None:
    """After its close frame the server keeps TCP open for the client's (RFC 6455 7.1.1):
    it used to drop it at once, so frames the client had already sent met a reset."""
    sock, ws = await _handshake(server.port, "/ws?token=not-a-token")
    with sock:
        code, reason, eof = await _until_close_frame(sock, ws)
        assert (code, reason) == (4401, "bad token")
        # The server waits up to 2 s; dropping within 0.5 s is the old behaviour, however
        # busy the machine (the wait is a lower bound on the server's side).
        assert not eof and not await _eof_within(sock, 0.5), "TCP dropped before our close"
        await asyncio.get_running_loop().sock_sendall(
            sock, ws.send(CloseConnection(code=code, reason=reason))
        )
        assert await _eof_within(sock, 10), "the server kept TCP open after both closes"


async def test_a_client_that_never_answers_the_close_is_dropped_within_the_bound(
    server: QuartsigServer,
) -> None:
    sock, ws = await _handshake(server.port, "/ws?token=not-a-token")
    with sock:
        assert (await _until_close_frame(sock, ws))[:2] == (4401, "bad token")
        assert await _eof_within(sock, 15), "a silent client held the connection open"
