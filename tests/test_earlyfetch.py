"""The early-fetch schedule, driven by a hand-moved clock: no sleeping."""

from __future__ import annotations

from quartsig.domain.model import Key
from quartsig.feed.earlyfetch import EarlyFetches


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def key(n: int) -> Key:
    return Key("summary", f"FX_IDC:K{n}", "1h")


def schedule(**options: float) -> tuple[EarlyFetches, Clock]:
    clock = Clock()
    return EarlyFetches(window=0.03, max_window=0.25, quiet=0.1, clock=clock, **options), clock


def test_nothing_gathered_is_never_due() -> None:
    early, _ = schedule()
    assert early.due() is None


def test_a_lone_key_goes_at_once() -> None:
    early, clock = schedule()
    early.add({key(1)})
    assert early.due() == clock.now
    assert early.take() == {key(1)}
    assert early.in_flight == {key(1)} and early.due() is None


def test_a_burst_is_gathered_for_the_window() -> None:
    early, clock = schedule()
    early.add({key(1)})
    early.finish(early.take(), served={key(1)})  # the first of a burst goes alone, at once
    clock.now += 0.01
    early.add({key(2)})
    opened = clock.now
    assert early.due() == opened + 0.03
    clock.now += 0.01
    early.add({key(3), key(4)})
    assert early.due() == opened + 0.03  # joins the gathering batch, same deadline
    clock.now = opened + 0.03
    assert early.take() == {key(2), key(3), key(4)}
    clock.now += 0.01
    early.add({key(5)})
    assert early.due() == clock.now + 0.06  # one fetch in flight: gathered twice as long


def test_keys_after_a_quiet_gap_go_at_once_again() -> None:
    early, clock = schedule()
    early.add({key(1)})
    early.take()
    clock.now += 0.5
    early.add({key(2)})
    assert early.due() == clock.now


def test_the_window_widens_while_fetches_are_in_flight_up_to_its_cap() -> None:
    early, clock = schedule()
    early.add({key(0)})
    for n in range(1, 20):
        clock.now += 0.01
        early.take()
        early.add({key(n)})
    assert early.fetches == 19
    assert early.due() == clock.now + 0.25  # 0.03 * 20 capped at max_window


def test_a_key_in_flight_pending_or_deferred_is_not_gathered_twice() -> None:
    early, _clock = schedule()
    assert early.add({key(1), key(2)}) == {key(1), key(2)}
    assert early.add({key(1), key(2)}) == set()  # pending
    batch = early.take()
    assert early.add({key(1), key(3)}) == {key(3)}  # key 1 in flight: only key 3 is new
    assert early.take() == {key(3)}  # the next fetch starts while the first is in flight
    early.finish(batch, served={key(1)})  # key 2 got nothing: it waits for the tick
    assert early.deferred == {key(2)}
    assert early.add({key(1), key(2)}) == {key(1)}  # served keys may come back (unsubscribed)
    assert early.in_flight == {key(3)}


def test_a_full_tick_takes_over_gathered_and_deferred_keys() -> None:
    early, clock = schedule()
    early.add({key(1)})
    early.take()
    early.finish({key(1)})  # failed: deferred
    clock.now += 0.01
    early.add({key(2)})
    early.tick_starting({key(1), key(2), key(3)})  # key 3: watched, not gathered yet
    assert early.due() is None and early.deferred == {key(1), key(2), key(3)}
    assert early.add({key(1), key(2), key(3)}) == set()  # the running tick fetches them
    assert early.add({key(4)}) == {key(4)}  # new since the tick started: early
    early.tick_done()
    assert early.add({key(1)}) == {key(1)}  # still without data after the tick: again


def test_a_huge_burst_goes_without_waiting_for_the_window() -> None:
    early, clock = schedule(max_keys=3)
    early.add({key(0)})
    early.take()
    clock.now += 0.01
    early.add({key(1), key(2), key(3)})
    assert early.due() == clock.now


def test_reset_forgets_everything() -> None:
    early, _ = schedule()
    early.add({key(1)})
    early.take()
    early.add({key(2)})
    early.reset()
    assert not (early.pending or early.in_flight or early.deferred) and early.fetches == 0
