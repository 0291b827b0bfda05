import asyncio

import orjson
import pytest

from quartsig.connection import Connection, Overflow, SlowConsumer
from quartsig.hub import UPDATE, Piece
from quartsig.planner import Key

KEY = Key("summary", "FX_IDC:USDJPY", "1m")


async def test_one_frame_per_wake_replies_first():
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    conn = Connection(send)
    conn.deliver(KEY, Piece(UPDATE, {"a": 1}, 1, None))
    conn.send('{"type":"pong"}')
    task = asyncio.create_task(conn.run())
    await asyncio.sleep(0.01)
    task.cancel()
    assert len(sent) == 1
    assert [m["type"] for m in orjson.loads(sent[0])] == ["pong", "update"]


async def test_a_stalled_send_raises_slow_consumer_after_the_timeout():
    async def stuck(text: str) -> None:
        await asyncio.sleep(3600)

    conn = Connection(stuck, send_timeout=0.05)
    conn.send("{}")
    with pytest.raises(SlowConsumer):
        await asyncio.wait_for(conn.run(), 2)


async def test_pending_pieces_merge_while_a_send_is_stuck():
    release = asyncio.Event()
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)
        await release.wait()

    conn = Connection(send)
    task = asyncio.create_task(conn.run())
    conn.deliver(KEY, Piece(UPDATE, {"a": 1}, 1, None))
    await asyncio.sleep(0.01)
    for value in range(2, 100):
        conn.deliver(KEY, Piece(UPDATE, {"a": value, f"k{value % 2}": value}, value, None))
    assert conn.backlog == 1
    release.set()
    await asyncio.sleep(0.01)
    task.cancel()
    assert orjson.loads(sent[-1])["data"] == {"a": 99, "k1": 99, "k0": 98}


async def test_replies_beyond_the_bound_overflow():
    async def send(text: str) -> None:
        await asyncio.sleep(3600)

    conn = Connection(send, max_replies=3)
    for _ in range(5):
        conn.send("{}")
    with pytest.raises(Overflow):
        await asyncio.wait_for(conn.run(), 2)


async def test_close_request_first_wins():
    async def send(text: str) -> None:
        pass

    conn = Connection(send)
    conn.close(1001, "bye")
    conn.close(4403, "later")
    assert await conn.close_requested() == (1001, "bye")
