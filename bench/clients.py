"""Load-generating WebSocket clients: thousands of connections in one process.

    python -m bench.clients        # driven over stdin/stdout by bench.fanout / bench.latency

Each process runs on uvloop with a minimal hand-written RFC 6455 client (an
``asyncio.Protocol`` per connection, no library), because the clients share
the 2 cores with the server under test and must cost as little CPU as
possible. A connection:

- sends the upgrade request, optionally with the header every browser sends,
  ``Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits``
  (plus an ``Origin``), and inflates compressed frames when a server accepts;
- sends one text frame with its ``subscribe`` ops (a JSON array);
- is *ready* on the first frame it receives after that;
- answers pings with pongs (``quartsig serve`` drops peers that do not);
- for every frame that carries ``"ts":<ms>`` records, per ``ts``, the wall
  time the frame arrived (the latest one, when a server sends a connection
  several frames for one ``ts``), plus bytes and pieces.

Control protocol: one JSON object per line on stdin, one JSON reply per line on
stdout. Ops: ``connect``, ``reset``, ``progress``, ``collect``, ``close``,
``exit`` (see :func:`Pool.command`). Raises its own ``RLIMIT_NOFILE`` soft limit
to the hard limit (each process has its own, so clients and server do not share
one budget of descriptors).
"""

from __future__ import annotations

import asyncio
import json
import resource
import struct
import sys
import time
import zlib
from typing import Any

from tests.support.wire import mask_frame, upgrade_request

OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Recorder:
    """Per process: for each ``ts``, when each connection last got a frame carrying it."""

    def __init__(self) -> None:
        self.arrivals: dict[int, dict[int, float]] = {}
        self.sizes: dict[int, list[int]] = {}  # ts -> [frames, bytes, pieces]

    def reset(self) -> None:
        self.arrivals = {}
        self.sizes = {}

    def record(self, index: int, payload: bytes, now: float) -> None:
        at = payload.rfind(b'"ts":')
        if at < 0:
            return
        end = at + 5
        while end < len(payload) and 48 <= payload[end] <= 57:
            end += 1
        ts = int(payload[at + 5 : end])
        arrivals = self.arrivals.get(ts)
        if arrivals is None:
            arrivals = self.arrivals[ts] = {}
            self.sizes[ts] = [0, 0, 0]
        arrivals[index] = now
        size = self.sizes[ts]
        size[0] += 1
        size[1] += len(payload)
        size[2] += payload.count(b'"ts":')


class Client(asyncio.Protocol):
    def __init__(self, pool: Pool, index: int, request: bytes, hello: bytes, deflate: bool) -> None:
        self.pool = pool
        self.index = index
        self.request = request
        self.hello = hello
        self.offer = deflate
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.ready = asyncio.get_running_loop().create_future()
        self.inflate_bits = 0  # 0: the server declined compression
        self.no_takeover = False
        self.inflater: Any = None
        self.fragments: list[bytes] = []
        self.fragment_rsv1 = False
        self.close_code: int | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.open.discard(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"lost before ready: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[: end + 4]
            self._upgrade(head)
            if not self.upgraded:
                return
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            b0 = buffer[pos]
            b1 = buffer[pos + 1] & 0x7F
            at = pos + 2
            if b1 == 126:
                if size - at < 2:
                    break
                b1 = (buffer[at] << 8) | buffer[at + 1]
                at += 2
            elif b1 == 127:
                if size - at < 8:
                    break
                b1 = int.from_bytes(buffer[at : at + 8], "big")
                at += 8
            if size - at < b1:
                break
            payload = bytes(buffer[at : at + b1])
            pos = at + b1
            self._frame(b0, payload, now)
        if pos:
            del buffer[:pos]

    # -- helpers ---------------------------------------------------------------------------
    def _upgrade(self, head: str) -> None:
        lines = head.split("\r\n")
        if " 101 " not in lines[0] + " ":
            self.pool.errors[lines[0][:60]] = self.pool.errors.get(lines[0][:60], 0) + 1
            self.transport.close()  # type: ignore[union-attr]
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(lines[0]))
            return
        self.upgraded = True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                self.inflate_bits = 15
                for param in value.split(";")[1:]:
                    pname, _, pval = param.strip().partition("=")
                    if pname == "server_max_window_bits" and pval:
                        self.inflate_bits = int(pval.strip('"'))
                    elif pname == "server_no_context_takeover":
                        self.no_takeover = True
        self.transport.write(mask_frame(0x1, self.hello))  # type: ignore[union-attr]

    def _inflate(self, payload: bytes) -> bytes:
        if self.inflater is None or self.no_takeover:
            self.inflater = zlib.decompressobj(-max(self.inflate_bits, 9))
        return self.inflater.decompress(payload + TAIL)  # type: ignore[no-any-return]

    def _frame(self, b0: int, payload: bytes, now: float) -> None:
        opcode = b0 & 0x0F
        if opcode >= 0x8:
            if opcode == 0x9:
                self.transport.write(mask_frame(0xA, payload))  # type: ignore[union-attr]
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.pool.closes[self.close_code] = self.pool.closes.get(self.close_code, 0) + 1
                self.transport.write(mask_frame(0x8, payload[:2]))  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
            return
        if not b0 & 0x80:  # fragment
            if opcode:
                self.fragment_rsv1 = bool(b0 & 0x40)
            self.fragments.append(payload)
            return
        if opcode == 0:
            self.fragments.append(payload)
            payload = b"".join(self.fragments)
            self.fragments = []
            if self.fragment_rsv1:
                payload = self._inflate(payload)
        elif b0 & 0x40:
            payload = self._inflate(payload)
        if not self.ready.done():
            self.ready.set_result(None)
        self.pool.recorder.record(self.index, payload, now)


class Pool:
    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.open: set[Client] = set()
        self.recorder = Recorder()
        self.errors: dict[str, int] = {}
        self.closes: dict[int, int] = {}

    async def connect(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``{"host", "port", "path", "deflate", "first", "subs": [[[sym, tf, profile]...]...],
        "concurrency", "timeout"}`` -> counts once every connection is ready (or failed)."""
        loop = asyncio.get_running_loop()
        host, port, deflate = spec["host"], int(spec["port"]), bool(spec["deflate"])
        gate = asyncio.Semaphore(int(spec.get("concurrency", 100)))
        timeout = float(spec.get("timeout", 60))
        failed = 0

        async def one(index: int, subs: list[list[str]]) -> None:
            nonlocal failed
            browser = [f"Origin: http://{host}:{port}", f"Sec-WebSocket-Extensions: {OFFER}"]
            request = upgrade_request(port, host=host, path=spec["path"],
                                      headers=browser if deflate else ())
            hello = json.dumps(
                [{"op": "subscribe", "symbol": s, "tf": tf, "profile": p} for s, tf, p in subs],
                separators=(",", ":"),
            ).encode()
            async with gate:
                for attempt in range(3):
                    try:
                        _, client = await loop.create_connection(
                            lambda: Client(self, index, request, hello, deflate), host, port
                        )
                        async with asyncio.timeout(timeout):
                            await client.ready
                    except (OSError, TimeoutError) as error:
                        name = type(error).__name__
                        self.errors[name] = self.errors.get(name, 0) + 1
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    self.clients.append(client)
                    self.open.add(client)
                    return
                failed += 1

        first = int(spec.get("first", 0))
        started = time.perf_counter()
        await asyncio.gather(*(one(first + i, subs) for i, subs in enumerate(spec["subs"])))
        return {
            "connected": len(self.open),
            "failed": failed,
            "deflate": sum(1 for c in self.open if c.inflate_bits),
            "seconds": round(time.perf_counter() - started, 2),
            "errors": self.errors,
        }

    async def command(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message["op"]
        if op == "connect":
            return await self.connect(message)
        if op == "reset":
            self.recorder.reset()
            return {"ok": True}
        if op == "progress":  # how many connections have each ts so far
            return {"counts": {str(ts): len(a) for ts, a in self.recorder.arrivals.items()},
                    "open": len(self.open), "closes": self.closes}  # fmt: skip
        if op == "collect":  # latencies in ms, per ts
            recorder = self.recorder
            return {
                "lat": {
                    str(ts): [round(t * 1000 - ts, 3) for t in arrivals.values()]
                    for ts, arrivals in recorder.arrivals.items()
                },
                "sizes": {str(ts): size for ts, size in recorder.sizes.items()},
            }
        if op == "close":
            count = len(self.open)
            for client in list(self.open):
                if client.transport is not None:
                    client.transport.close()
            self.clients.clear()
            await asyncio.sleep(0.2)
            return {"closed": count}
        if op == "exit":
            return {"bye": True}
        return {"error": f"unknown op {op}"}


async def main() -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pool = Pool()
    while True:
        line = await reader.readline()
        if not line:
            break
        message = json.loads(line)
        reply = await pool.command(message)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if message["op"] == "exit":
            break


def run() -> None:
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


if __name__ == "__main__":
    run()
