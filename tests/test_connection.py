import asyncio

import orjson

from quartsig.domain.model import Key
from quartsig.fanout.connection import TOO_SLOW, YIELD_EVERY, Connection, Outbox
from quartsig.fanout.hub import UPDATE, Piece
from tests.support.clocks import ManualClock

KEY = Key("summary", "FX_IDC:USDJPY", "1m")
OTHER = Key("summary", "FX_IDC:EURUSD", "1m")


def update(value: int) -> Piece:
    return Piece(UPDATE, {"a": value}, value, None)


class Peer:
    """A send function that records frames and can be made to stall."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def __call__(self, text: str) -> None:
        self.frames.append(text)
        await self.flowing.wait()

    def messages(self, n: int = -1) -> list[dict]:
        value = orjson.loads(self.frames[n])
        return value if isinstance(value, list) else [value]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_pending_replies_and_pieces_leave_as_one_frame_replies_first():
    peer = Peer()
    conn = Connection(peer)
    conn.deliver(KEY, update(1))
    conn.send('{"type":"pong"}')
    await settle()
    assert len(peer.frames) == 1
    assert [m["type"] for m in peer.messages()] == ["pong", "update"]


async def test_the_own_drain_task_exists_only_while_there_is_something_to_send():
    peer = Peer()
    conn = Connection(peer)
    conn.send("{}")
    assert conn._task is not None
    await settle()
    assert conn._task is None


async def test_a_stalled_send_closes_with_1013_after_the_send_timeout():
    peer = Peer()
    peer.flowing.clear()
    closed = []
    conn = Connection(peer, send_timeout=0.05, on_close=lambda: closed.append(True))
    conn.send("{}")
    await asyncio.sleep(0.2)
    assert conn.closing == (1013, TOO_SLOW)
    assert closed == [True]


async def test_pending_pieces_merge_while_a_send_is_stuck():
    peer = Peer()
    peer.flowing.clear()
    conn = Connection(peer)
    conn.deliver(KEY, update(1))
    await settle()
    for value in range(2, 100):
        conn.deliver(KEY, Piece(UPDATE, {"a": value, f"k{value % 2}": value}, value, None))
    assert conn.backlog == 1 and conn.conflated == 97
    peer.flowing.set()
    await settle()
    assert peer.messages()[0]["data"] == {"a": 99, "k1": 99, "k0": 98}


async def test_replies_beyond_their_bound_close_the_connection():
    peer = Peer()
    peer.flowing.clear()
    conn = Connection(peer, max_replies=3)
    for _ in range(5):
        conn.send("{}")
    assert conn.closing == (1013, TOO_SLOW)


async def test_the_first_close_decision_wins():
    conn = Connection(Peer())
    conn.close(1001, "bye")
    conn.close(4403, "later")
    assert conn.closing == (1001, "bye")


async def test_a_batch_goes_out_from_the_outbox_one_frame_per_connection():
    outbox = Outbox()
    outbox.start()
    peers = [Peer() for _ in range(3)]
    conns = [Connection(peer, outbox=outbox) for peer in peers]
    try:
        with outbox.batch():
            for conn in conns:
                conn.deliver(KEY, update(1))
                conn.deliver(OTHER, update(2))
                assert conn._task is None  # queued in the outbox, no task of its own
        await settle()
        for peer in peers:
            assert len(peer.frames) == 1 and len(peer.messages()) == 2
    finally:
        await outbox.stop()


async def test_the_outbox_lets_the_loop_run_between_sends_that_never_yield():
    """The direct send (quartsig.hosting.text_sender) yields only on a full socket: the
    outbox itself must give the loop a turn every YIELD_EVERY sends."""
    outbox = Outbox()
    outbox.start()
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    conns = [Connection(send, outbox=outbox) for _ in range(3 * YIELD_EVERY)]
    seen: list[int] = []

    async def probe() -> None:
        while len(sent) < len(conns):
            seen.append(len(sent))
            await asyncio.sleep(0)

    try:
        with outbox.batch():
            for conn in conns:
                conn.deliver(KEY, update(1))
        await asyncio.wait_for(probe(), 5)
        assert len(sent) == len(conns)
        assert YIELD_EVERY in seen and 2 * YIELD_EVERY in seen
    finally:
        await outbox.stop()


async def test_a_stuck_connection_does_not_hold_up_the_others_and_catches_up_alone():
    """The watchdog's time is a hand-moved clock: the stuck send holds the tick exactly until
    the watchdog has looked twice (``inline_timeout`` to twice that), never by luck."""
    clock = ManualClock()
    outbox = Outbox(inline_timeout=0.05, clock=clock)
    outbox.start()
    stuck, fine = Peer(), Peer()
    stuck.flowing.clear()
    slow = Connection(stuck, outbox=outbox, send_timeout=5)
    quick = Connection(fine, outbox=outbox)
    try:
        with outbox.batch():
            slow.deliver(KEY, update(1))
            quick.deliver(KEY, update(1))
        await clock.advance(0.05)
        assert fine.frames == [] and not slow.congested  # held up: its send has had one look
        await clock.advance(0.05)
        assert len(fine.frames) == 1 and slow.congested  # the second look interrupts it
        for value in range(2, 6):  # more ticks while it is stuck: its own task takes them
            with outbox.batch():
                slow.deliver(KEY, update(value))
                quick.deliver(KEY, update(value))
            await settle()
        assert len(fine.frames) == 5  # no tick waited for the watchdog again
        assert not slow.queued  # congested: never waited for by the outbox
        stuck.flowing.set()
        await settle()
        assert stuck.messages()[-1]["data"] == {"a": 5}
        assert not slow.congested  # it took frames again
    finally:
        await outbox.stop()


async def _converges(seed: int) -> tuple[bool, int, int]:
    """One random schedule of batched ticks, unbatched publishes, subscribes and sends that
    are sometimes slower than the outbox's inline timeout. Returns (outbox alive, keys a
    connection holds wrongly, connections left with a backlog)."""
    import random

    from quartsig.fanout.hub import Hub

    rng = random.Random(seed)
    hub = Hub(max_subscriptions=50)
    outbox = Outbox(inline_timeout=0.002)
    outbox.start()
    keys = [Key("summary", f"X:S{i}", "1m") for i in range(8)]
    conns: list[tuple[Connection, dict]] = []
    for user in range(30):
        state: dict = {}

        async def send(text: str, state: dict = state) -> None:
            # as Quart and Hypercorn do: one yield before the write (Quart's sleep(0), which a
            # busy loop can stretch past the inline timeout), then the frame is in the
            # transport, then it drains (slowly for a congested peer)
            if rng.random() < 0.05:
                await asyncio.sleep(0.003)
            else:
                await asyncio.sleep(0)
            value = orjson.loads(text)
            for m in value if isinstance(value, list) else [value]:
                if m["type"] in ("snapshot", "update"):
                    k = (m["symbol"], m["tf"], m["profile"])
                    state[k] = m["data"] if m["type"] == "snapshot" else {**state[k], **m["data"]}
            draw = rng.random()
            if draw < 0.05:
                await asyncio.sleep(0.003)  # over the inline timeout: judged congested
            elif draw < 0.5:
                await asyncio.sleep(0)

        conn = Connection(send, outbox=outbox, send_timeout=5.0)
        hub.attach(conn, user)
        conns.append((conn, state))
    for step in range(200):
        draw = rng.random()
        if draw < 0.3:
            hub.subscribe(rng.choice(conns)[0], rng.choice(keys))
        elif draw < 0.6:
            with outbox.batch():  # a tick
                for k in rng.sample(keys, 4):
                    hub.publish(k, {"v": rng.randrange(5), "step": step}, step)
        else:  # a publish outside any tick
            hub.publish(rng.choice(keys), {"v": rng.randrange(5), "step": step}, step)
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0 if rng.random() < 0.8 else 0.001)
    await asyncio.sleep(0.3)
    alive = outbox._task is not None and not outbox._task.done()
    wrong = sum(
        1
        for conn, state in conns
        for k in hub.subscriptions[conn]
        if hub.entries[k].data is not None
        and state.get((k.symbol, k.tf, k.profile)) != hub.entries[k].data
    )
    backlog = sum(1 for conn, _ in conns if conn.backlog)
    await outbox.stop()
    return alive, wrong, backlog


async def test_every_connection_converges_to_the_hub_under_random_interleavings():
    """Ticks, out-of-tick publishes, subscribes and slow sends in random orders: whatever
    was conflated or sent from whichever task, each connection ends up holding exactly
    what the hub holds for each of its keys, and the outbox task is still running."""
    results = [await _converges(seed) for seed in range(25)]
    assert results == [(True, 0, 0)] * 25
