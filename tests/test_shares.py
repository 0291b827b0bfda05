"""Issue 20, point 4: one account's share of early-fetch requests and of the watched keys, pure
and through the real ``/ws`` route, hub and collector against the stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from quartsig.access import accounts
from quartsig.access.shares import EarlyShare, KeyShare
from quartsig.app import create_app
from tests.support.clocks import HandClock
from tests.test_stream import KEY, Stack, authed, receive, standin_server

# --- pure ---------------------------------------------------------------------------------------


def test_the_first_key_of_a_group_in_a_step_takes_a_token_the_others_ride_along():
    clock = HandClock()
    share = EarlyShare(3.0, clock=clock)
    assert all(share.admit(42, ("forex", "summary")) for _ in range(50))  # one frame: 1 token
    assert share.admit(42, ("crypto", "summary"))  # another screener: another request
    share.settle()
    assert share.admit(42, ("forex", "summary"))  # a new step: a new request
    share.settle()
    assert not share.admit(42, ("forex", "summary"))  # 3 spent
    assert share.admit(43, ("forex", "summary"))  # another account's share is its own
    share.settle()
    clock.now += 20.0  # 3 a minute: one more
    assert share.admit(42, ("forex", "summary"))
    share.settle()
    assert not share.admit(42, ("forex", "summary"))


def test_a_share_settles_itself_when_given_a_scheduler():
    scheduled: list[Callable[[], None]] = []
    share = EarlyShare(1.0, clock=HandClock(), later=scheduled.append)
    assert share.admit(42, "g") and share.admit(42, "g") and share.admit(43, "g")
    assert len(scheduled) == 1  # once per step, however many accounts
    scheduled.pop()()
    assert not share.admit(42, "g")


def test_prune_forgets_only_refilled_accounts():
    clock = HandClock()
    share = EarlyShare(6.0, clock=clock)
    share.admit(42, "g")
    share.settle()
    clock.now += 5.0
    share.admit(43, "g")
    share.prune()
    assert len(share) == 2
    clock.now += 6.0  # 42 has its token back; 43 not yet
    share.prune()
    assert len(share) == 1


def test_an_account_holds_distinct_keys_over_all_its_sockets():
    share: KeyShare[str] = KeyShare(3)
    held: dict[str, set[str]] = {"a": set(), "b": set(), "c": set()}
    share.join(42, "a")
    share.join(42, "b")
    share.join(43, "c")
    held["a"] |= {"k1", "k2"}
    held["b"] |= {"k1", "k3"}  # k1 twice: 3 distinct keys
    assert share.held(42, held) == 3
    assert share.allows(42, "k2", held)  # held already: free
    assert not share.allows(42, "k4", held)
    assert share.allows(43, "k4", held)
    share.leave(42, "b")
    assert share.allows(42, "k4", held)
    assert not share.allows(42, "k5", held, elsewhere=2)  # two on other nodes
    assert KeyShare(0).allows(42, "k9", {"a": {"x"}})


# --- through /ws --------------------------------------------------------------------------------


@pytest.fixture
async def stack(tmp_path: Any) -> AsyncIterator[Stack]:
    async with standin_server() as (standin, url):
        app = create_app(data_dir=tmp_path, scanner_url=url, interval=300.0, secret_keys=(KEY,),
                         ops_per_second=1000.0)
        async with app.test_app() as test_app:
            await accounts.add(42)
            await accounts.add(43)
            tokens = app.extensions["quartsig"].tokens
            yield Stack(app, test_app.test_client(), standin, tokens.issue(42).token)


def subscribe(symbol: str, id: object, tf: str = "1h") -> str:
    return orjson.dumps({"op": "subscribe", "symbol": symbol, "tf": tf, "profile": "summary",
                         "id": id}).decode()


async def answer(ws: Any, id: object) -> list[dict[str, Any]]:
    """What ``id``'s subscribe brought: its reply, and the symbol's rejection or notice."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while True:
            got += await receive(ws, 30)
            reply = next((m for m in got if m.get("id") == id), None)
            if reply is not None and (reply["type"] == "error" or any(
                    m["type"] in ("error", "notice") and "symbol" in m for m in got)):
                return got


async def test_one_made_up_ticker_at_a_time_costs_the_accounts_share_not_a_request_each(
        stack: Stack):
    """The held-out churn's shape: two sockets, one made-up ticker a frame. Before the share,
    each ticker was an early fetch of its own (40 requests here); now the account's burst of 5,
    then one more per 12 s, and the rest wait for the full tick."""
    state = stack.app.extensions["quartsig"]
    clock = HandClock()
    state.early_share.clock = clock
    codes: list[str] = []
    async with stack.ws() as a, stack.ws() as b:
        await authed(a, stack.token)
        await authed(b, stack.token)
        before = len(stack.standin.log)
        for n in range(40):
            ws = (a, b)[n % 2]
            await ws.send(subscribe(f"FX_IDC:ZQ{n}", n))
            codes += [m["code"] for m in await answer(ws, n) if "code" in m]
        assert len(stack.standin.log) - before == 5
        assert codes.count("unknown_symbol") == 5 and codes.count("deferred") == 35
        clock.now += 12.0
        await a.send(subscribe("FX_IDC:ZQX", "x"))
        assert [m["code"] for m in await answer(a, "x") if "code" in m] == ["unknown_symbol"]
        assert len(stack.standin.log) - before == 6
        await state.collector.tick(await state.broker.demand(), full=True)
        assert len(stack.standin.log) - before == 7  # the deferred ones: one grouped request
    assert state.hub.demand() == set()


async def test_another_accounts_early_fetch_is_untouched(stack: Stack):
    state = stack.app.extensions["quartsig"]
    state.early_share.clock = HandClock()
    other = state.tokens.issue(43).token
    async with stack.ws() as noisy, stack.ws() as honest:
        await authed(noisy, stack.token)
        await authed(honest, other)
        for n in range(8):
            await noisy.send(subscribe(f"FX_IDC:ZQ{n}", n))
            await answer(noisy, n)
        await honest.send(subscribe("FX_IDC:EURUSD", 1))
        kinds: list[str] = []
        async with asyncio.timeout(30):
            while "snapshot" not in kinds:
                kinds += [m["type"] for m in await receive(honest, 30)]
        assert kinds == ["subscribed", "snapshot"]


async def test_an_account_holds_at_most_its_share_of_keys_over_its_sockets(stack: Stack):
    state = stack.app.extensions["quartsig"]
    state.key_share.limit = 5
    tfs = ["1m", "5m", "15m", "1h", "4h", "1d"]
    async with stack.ws() as a, stack.ws() as b, stack.ws() as c:
        for ws, token in ((a, stack.token), (b, stack.token),
                          (c, state.tokens.issue(43).token)):
            await authed(ws, token)

        async def reply(ws: Any, tf: str) -> dict[str, Any]:
            await ws.send(subscribe("FX_IDC:EURUSD", tf, tf))
            async with asyncio.timeout(30):
                while True:
                    for message in await receive(ws, 30):
                        if message.get("id") == tf:
                            return message

        for tf in tfs[:3]:
            assert (await reply(a, tf))["type"] == "subscribed"
        assert (await reply(b, "1m"))["type"] == "subscribed"  # held on a: free
        for tf in tfs[3:5]:
            assert (await reply(b, tf))["type"] == "subscribed"
        refused = await reply(b, tfs[5])
        assert refused["code"] == "account_key_limit", refused
        assert (await reply(c, tfs[5]))["type"] == "subscribed"  # another account's own share
        await a.send(orjson.dumps({"op": "unsubscribe", "symbol": "FX_IDC:EURUSD", "tf": "5m",
                                   "profile": "summary", "id": "u"}).decode())
        assert (await reply(b, tfs[5]))["type"] == "subscribed"
        assert state.metrics.refusals.labels(code="account_key_limit")._value.get() == 1
