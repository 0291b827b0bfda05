"""A plugin's failure is charged to its profile and to no one else (quartsig.plugins.guard).

The pure parts (``check_data``, ``run_compute``, ``Quarantine``) are driven directly; the
collector's part through ``compose`` and ``tick`` with a scripted scanner client that refuses
what TradingView would refuse, so that every round of re-fetching is visible.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from quartsig.domain.model import Key, ScanError, ScanRequest, ScanResult
from quartsig.domain.timeframes import split_column
from quartsig.fanout.hub import Hub
from quartsig.ops.metrics import Metrics
from quartsig.plugins.guard import Failure, Quarantine, check_data, run_compute
from quartsig.plugins.profiles import Profile
from tests.support.clocks import HandClock
from tests.test_collector import (
    EURUSD,
    PROFILES,
    USDJPY,
    Market,
    attach,
    collector,
    hub_of,
    messages,
    ok,
    publish,
)

SUMMARY, FULL = PROFILES["summary"], PROFILES["full"]




def _echo(columns: tuple[str, ...]) -> Any:
    def compute(row: Mapping[str, Any]) -> dict[str, Any]:
        return {name: row.get(name) for name in columns}

    return compute


MOMENTUM_COLUMNS = ("RSI", "RSI[1]", "Not.A.Column")
MOMENTUM = Profile("momentum", "has a column TradingView refuses", MOMENTUM_COLUMNS,
                   _echo(MOMENTUM_COLUMNS))
GHOST = Profile("ghost", "only a refused column", ("Not.A.Column",), _echo(("Not.A.Column",)))


# ------------------------------------------------------------------------ check_data, run_compute


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([1, 2], "a list, not a dict"),
        (None, "a NoneType, not a dict"),
        ({"a": float("nan")}, "finite"),
        ({"a": float("inf")}, "finite"),
        ({"a": {1, 2}}, "a set for 'a'"),
        ({"a": {"nested": 1}}, "a dict for 'a'"),
        ({"a": [1]}, "a list for 'a'"),
        ({1: 2}, "int key"),
        ({"a": 2**64}, "64 bits"),
    ],
)
def test_check_data_names_what_is_wrong(data: Any, fragment: str) -> None:
    problem = check_data(data)
    assert problem is not None and fragment in problem


def test_check_data_accepts_flat_json_scalars() -> None:
    assert check_data({"a": None, "b": "BUY", "c": 1, "d": -1.5e300, "e": True}) is None
    assert check_data({}) is None


def test_run_compute_turns_each_misbehaviour_into_a_failure() -> None:
    def raising(row: Mapping[str, Any]) -> dict[str, Any]:
        raise KeyError("RSI")

    failure = run_compute(Profile("p", "", ("RSI",), raising), ("RSI",), (None,))
    assert failure == Failure("exception", "compute raised KeyError: 'RSI'")

    failure = run_compute(Profile("p", "", ("RSI",), lambda row: [row]), ("RSI",), (1,))
    assert isinstance(failure, Failure) and failure.kind == "bad_value"

    ticks = iter([0.0, 0.2])  # the compute "took" 200 ms by this clock
    failure = run_compute(Profile("p", "", ("RSI",), dict), ("RSI",), (1,),
                          budget=0.05, perf=lambda: next(ticks))
    assert isinstance(failure, Failure) and failure.kind == "slow" and "200 ms" in failure.message

    assert run_compute(Profile("p", "", ("RSI",), dict), ("RSI",), (1.5,)) == {"RSI": 1.5}


def test_a_compute_is_timed_by_its_threads_cpu_and_a_built_in_not_at_all() -> None:
    # a thread descheduled on a busy machine: the wall clock moved, the thread's CPU did not
    slept = run_compute(Profile("p", "", ("RSI",), lambda row: time.sleep(0.08) or dict(row)),
                        ("RSI",), (1,), budget=0.05)
    assert slept == {"RSI": 1}
    ticks = iter([0.0, 0.2])
    built_in = Profile("p", "", ("RSI",), dict, checked=True)  # bounded by its own tests
    assert run_compute(built_in, ("RSI",), (1,), budget=0.05,
                       perf=lambda: next(ticks)) == {"RSI": 1}


def test_run_compute_prefers_compute_values() -> None:
    profile = Profile("p", "", ("RSI",), dict, compute_values=lambda values: {"v": values[0]})
    assert run_compute(profile, ("RSI",), (2,)) == {"v": 2}


# ------------------------------------------------------------------------ Quarantine


def test_a_refused_column_is_withheld_from_its_owners_until_it_lifts() -> None:
    clock = HandClock()
    quarantine = Quarantine({"momentum": MOMENTUM_COLUMNS, "ghost": ("Not.A.Column",),
                             "summary": ("Recommend.All",)}, period=60.0, clock=clock)
    assert quarantine.refuse_column("Not.A.Column", "Unknown field") == ["ghost", "momentum"]
    active = quarantine.active()
    assert active["momentum"] == ("RSI", "RSI[1]")
    assert "ghost" not in active  # nothing left to fetch: disabled
    assert active["summary"] == ("Recommend.All",)
    reason = quarantine.reason("momentum")
    assert reason is not None and "computed without it" in reason
    ghost = quarantine.reason("ghost")
    assert ghost is not None and "disabled" in ghost
    assert quarantine.refuse_column("Unheard.Of", "Unknown field") == []

    clock.now += 59.0
    assert quarantine.lift() == []
    clock.now += 1.0
    assert sorted(quarantine.lift()) == ["column Not.A.Column", "profile ghost",
                                         "profile momentum"]
    assert quarantine.active()["momentum"] == MOMENTUM_COLUMNS
    assert quarantine.charges == {}


# ------------------------------------------------------------------------ compose


def _buggy(fail: dict[str, Any]) -> Profile:
    def compute(row: Mapping[str, Any]) -> dict[str, Any]:
        if fail["how"] == "raise":
            raise ZeroDivisionError("a plugin bug")
        if fail["how"] == "nan":
            return {"rating": float("nan")}
        return {"rating": row.get("Recommend.All")}

    return Profile("buggy", "fails while told to", ("Recommend.All",), compute)


@pytest.mark.parametrize("how", ["raise", "nan"])
async def test_a_failing_compute_costs_only_its_own_key(how: str) -> None:
    fail = {"how": how}
    market, metrics = Market(), Metrics()
    col = collector({"buggy": _buggy(fail), "summary": SUMMARY, "full": FULL}, metrics=metrics)
    # The bad key first and in the middle: no order of keys lets it stop the others.
    keys = [Key("full", USDJPY, "1h"), Key("buggy", USDJPY, "1h"), Key("summary", USDJPY, "1h"),
            Key("summary", EURUSD, "1h")]
    conn = attach(hub_of(col), *keys)
    for _ in range(3):  # three ticks; the market moves in between
        market.model.step()
        publish(col, keys, [market.answer(r) for r in col.plan(keys)])
    received = messages(conn)
    good = {key for key in keys if key.profile != "buggy"}
    assert {Key(m["profile"], m["symbol"], m["tf"]) for m in received
            if m["type"] in ("snapshot", "update")} == good
    for key in good:
        assert hub_of(col).entries[key].data == market.expected(PROFILES[key.profile], key)
    [told] = [m for m in received if m["type"] == "error"]  # once, not every tick
    assert (told["code"], told["profile"], told["symbol"]) == ("profile_failed", "buggy", USDJPY)
    assert not [m for m in received if m["type"] == "status"] and hub_of(col).status[0] == "ok"
    kind = "exception" if how == "raise" else "bad_value"
    assert metrics.registry.get_sample_value(
        "quartsig_profile_failures_total", {"profile": "buggy", "kind": kind}) == 3
    assert Key("buggy", USDJPY, "1h") in hub_of(col).subscriptions[conn]  # kept

    # A newcomer is told by the hub, which remembers the failure until data comes.
    late = attach(hub_of(col), Key("buggy", USDJPY, "1h"), user=2)
    assert [m["code"] for m in messages(late)] == ["profile_failed"]

    fail["how"] = "ok"
    publish(col, keys, [market.answer(r) for r in col.plan(keys)])
    [snapshot] = messages(conn)
    assert (snapshot["type"], snapshot["profile"]) == ("snapshot", "buggy")
    again = attach(hub_of(col), Key("buggy", USDJPY, "1h"), user=3)
    assert [m["type"] for m in messages(again)] == ["snapshot"]  # the failure is forgotten


async def test_a_slow_compute_is_a_failure() -> None:
    clock = {"now": 0.0}

    def slow(row: Mapping[str, Any]) -> dict[str, Any]:
        clock["now"] += 1.0  # this compute takes a second by the collector's clock
        return {"x": 1}

    market = Market()
    col = collector({"slow": Profile("slow", "", ("RSI",), slow), "summary": SUMMARY},
                    perf=lambda: clock["now"], compute_budget=0.5)
    keys = [Key("slow", USDJPY, "5m"), Key("summary", USDJPY, "5m")]
    conn = attach(hub_of(col), *keys)
    publish(col, keys, [market.answer(r) for r in col.plan(keys)])
    received = messages(conn)
    assert [(m["type"], m["profile"]) for m in received if m["type"] == "snapshot"] == [
        ("snapshot", "summary")]
    [error] = [m for m in received if m["type"] == "error"]
    assert "over the 500 ms bound" in error["message"]


# ------------------------------------------------------------------------ tick: refused columns


class Refusing:
    """A scanner client that answers from the market, refusing any request with a column whose
    base is in ``bad``, as TradingView does: a 400 naming the first such column (as
    ``named`` maps it: TradingView's name for a field need not be the one quartsig sent)."""

    def __init__(self, market: Market, bad: Iterable[str], named: Mapping[str, str] = {}):
        self.market = market
        self.bad = set(bad)
        self.named = dict(named)
        self.log: list[ScanRequest] = []

    async def scan_all(self, requests: Iterable[ScanRequest], *, deadline: float | None = None
                       ) -> list[ScanResult]:
        results = []
        for request in requests:
            self.log.append(request)
            refused = [c for c in request.columns if split_column(c)[0] in self.bad]
            if refused:
                name = self.named.get(refused[0], refused[0])
                error = ScanError("bad_column", f'Unknown field "{name}"', False, 400, name)
                results.append(ScanResult(request, {}, frozenset(), error, 1, 0.01))
            else:
                results.append(self.answer(request))
        return results

    def answer(self, request: ScanRequest) -> ScanResult:
        """The market's values; 1.0 for a column the market does not model but was let through."""
        rows = {}
        for ticker in request.tickers:
            row = {}
            for name in request.columns:
                base, tf = split_column(name)
                row[name] = self.market.model.values(ticker, tf).get(base, 1.0)
            rows[ticker] = row
        return ok(request, rows)


async def test_a_refused_column_is_quarantined_and_the_request_fetched_again_in_the_tick():
    market, clock, metrics = Market(), HandClock(), Metrics()
    client = Refusing(market, {"Not.A.Column"})
    col = collector({"momentum": MOMENTUM, "summary": SUMMARY, "full": FULL}, client=client,
                    clock=clock, quarantine=300.0, metrics=metrics)
    bad = Key("momentum", USDJPY, "1h")
    others = [Key("summary", USDJPY, "1h"), Key("full", USDJPY, "1h"), Key("summary", EURUSD, "1h")]
    conn = attach(hub_of(col), bad, *others)
    assert len(col.plan(hub_of(col).demand())) == 1  # one request: every key shares the refusal

    await col.tick(hub_of(col).demand(), full=True)
    assert len(client.log) == 2  # refused, then fetched again without the column
    assert not any("Not.A.Column|60" in r.columns for r in client.log[1:])
    received = messages(conn)
    assert {(m["type"], m["profile"], m["symbol"]) for m in received if m["type"] != "error"} == {
        ("snapshot", key.profile, key.symbol) for key in (bad, *others)}
    assert hub_of(col).status == ("ok", "1 requests ok")
    [told] = [m for m in received if m["type"] == "error"]
    assert (told["code"], told["profile"]) == ("profile_failed", "momentum")
    assert "Not.A.Column" in told["message"] and "without it" in told["message"]
    momentum = hub_of(col).entries[bad].data
    assert momentum is not None and momentum["Not.A.Column"] is None  # computed without it
    assert momentum["RSI"] == market.model.values(USDJPY, "1h")["RSI"]
    assert metrics.registry.get_sample_value(
        "quartsig_profile_failures_total", {"profile": "momentum", "kind": "bad_column"}) == 1

    client.log.clear()
    await col.tick(hub_of(col).demand(), full=True)  # quarantined: asked no more, told no more
    assert len(client.log) == 1 and not [m for m in messages(conn) if m["type"] == "error"]

    clock.now += 300.0  # lifted: asked again (and refused again: told again)
    client.log.clear()
    await col.tick(hub_of(col).demand(), full=True)
    assert "Not.A.Column|60" in client.log[0].columns and len(client.log) == 2
    assert [m["code"] for m in messages(conn) if m["type"] == "error"] == ["profile_failed"]

    client.bad.clear()  # TradingView has the column again
    clock.now += 300.0
    await col.tick(hub_of(col).demand(), full=True)
    assert hub_of(col).entries[bad].data["Not.A.Column"] is not None  # type: ignore[index]


async def test_a_profile_left_without_columns_is_disabled_and_its_keys_not_fetched():
    market = Market()
    client = Refusing(market, {"Not.A.Column"})
    col = collector({"ghost": GHOST, "summary": SUMMARY}, client=client)
    bad, good = Key("ghost", USDJPY, "5m"), Key("summary", USDJPY, "5m")
    conn = attach(hub_of(col), bad, good)
    await col.tick(hub_of(col).demand(), full=True)
    received = messages(conn)
    assert [(m["type"], m["profile"]) for m in received if m["type"] == "snapshot"] == [
        ("snapshot", "summary")]
    [told] = [m for m in received if m["type"] == "error"]
    assert told["profile"] == "ghost" and "disabled" in told["message"]
    client.log.clear()
    await col.tick(hub_of(col).demand(), full=True)
    assert all("Not.A.Column|5" not in r.columns for r in client.log)
    assert hub_of(col).status[0] == "ok"


async def test_a_refusal_no_profile_owns_is_found_by_splitting_the_request():
    market = Market()
    # TradingView names the field in a way no profile spells it.
    client = Refusing(market, {"Not.A.Column"}, named={"Not.A.Column|5": "not_a_column"})
    col = collector({"momentum": MOMENTUM, "summary": SUMMARY}, client=client)
    bad, good = Key("momentum", USDJPY, "5m"), Key("summary", USDJPY, "5m")
    conn = attach(hub_of(col), bad, good)
    await col.tick(hub_of(col).demand(), full=True)
    # one joint request, refused; one per profile; summary's is answered, momentum's is not
    assert [len(r.columns) for r in client.log] == [4, 3, 1]
    received = messages(conn)
    assert [m["profile"] for m in received if m["type"] == "snapshot"] == ["summary"]
    [told] = [m for m in received if m["type"] == "error"]
    assert told["profile"] == "momentum" and "disabled" in told["message"]
    assert hub_of(col).status[0] == "ok"


async def test_the_hub_tells_without_dropping() -> None:
    hub = Hub()
    key = Key("momentum", USDJPY, "5m")
    conn = attach(hub, key)
    hub.warn(key, "profile_failed", "broken")
    [error] = messages(conn)
    assert error == {"type": "error", "code": "profile_failed", "message": "broken",
                     "symbol": USDJPY, "tf": "5m", "profile": "momentum"}
    assert hub.subscriptions[conn] == {key} and hub.demand() == {key}
    hub.detach(conn)
    assert key in hub.entries  # remembered for the next subscriber, until swept
