"""The cycle collector's policy (quartsig.ops.freezer): what survives is frozen, and closed
connections that died in cycles are still freed, at quiet moments, within a bounded number of
steps. Clock, counts and quiet moments are driven by hand: no wall-clock luck."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import cast

import pytest

from quartsig.config import Settings
from quartsig.hosting.sockets import count_sockets
from quartsig.ops.freezer import Freezer
from quartsig.server import freezer_of
from quartsig.state import State


class Connection:
    """Stands for what a connection keeps: objects that die in a cycle (a task and its
    coroutine's frame, a protocol and its transport)."""

    def __init__(self) -> None:
        self.me = self
        self.buffers = [bytearray(1024) for _ in range(4)]


class Counts:
    def __init__(self) -> None:
        self.open = 0
        self.closed = 0
        self.now = 0.0
        self.quiet = True

    def freezer(self, **options: float) -> Freezer:
        return Freezer(closed=lambda: self.closed, open=lambda: self.open,
                       quiet=lambda: self.quiet, clock=lambda: self.now, **options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Leave the process's collector as the test found it (nothing frozen by these tests)."""
    gc.collect()
    yield
    gc.unfreeze()
    gc.collect()


def _open(counts: Counts, connections: list[Connection]) -> weakref.ref[Connection]:
    connection = Connection()
    connections.append(connection)
    counts.open += 1
    return weakref.ref(connection)


def _close(counts: Counts, connections: list[Connection]) -> None:
    connections.pop(0)  # its cycle keeps it alive: only a collection that walks it frees it
    counts.open -= 1
    counts.closed += 1


def test_open_connections_are_frozen_and_full_collections_stop_walking_them() -> None:
    counts, connections = Counts(), list[Connection]()
    freezer = counts.freezer(floor=4, every=0)
    refs = [_open(counts, connections) for _ in range(100)]
    for _ in range(10):
        assert not freezer.step()
    assert freezer.thaws == 0
    tracked = {id(thing) for thing in gc.get_objects()}
    assert not any(id(ref()) in tracked for ref in refs)  # frozen: a collection skips them
    assert gc.get_freeze_count() >= 100


def test_closed_connections_dead_in_cycles_are_freed_within_a_bounded_number_of_quiet_steps(
) -> None:
    """Connections open and close one by one, each frozen first; with 40 open and ``share``
    0.25 (at least ``floor`` = 4), a thaw is due once 10 have closed: none of them stays
    unfreed for more than 10 steps, and only quiet steps thaw."""
    counts, connections = Counts(), list[Connection]()
    freezer = counts.freezer(floor=4, share=0.25, every=0)
    refs = [_open(counts, connections) for _ in range(40)]
    freezer.step()
    closed_at: dict[int, int] = {}
    waited = []
    for step in range(200):
        counts.quiet = step % 3 != 0  # a third of the steps fall during a fan-out
        refs.append(_open(counts, connections))
        _close(counts, connections)
        closed_at[len(closed_at)] = step
        thawed = freezer.step()
        assert not thawed or counts.quiet
        for index, at in list(closed_at.items()):
            if refs[index]() is None:
                waited.append(step - at)
                del closed_at[index]
    assert freezer.thaws >= 200 // 12
    assert waited and max(waited) <= 11  # a thaw due at a fan-out waits one step
    assert all(step_now - at <= 11 for step_now, at in ((199, at) for at in closed_at.values()))
    assert all(ref() is not None for ref in refs[-40:])  # the open ones are kept


def test_a_thaw_waits_for_a_quiet_moment() -> None:
    counts, connections = Counts(), list[Connection]()
    freezer = counts.freezer(floor=1, every=0)
    ref = _open(counts, connections)
    freezer.step()
    _close(counts, connections)
    counts.quiet = False
    for _ in range(5):
        assert not freezer.step()
    assert ref() is not None  # frozen, in its cycle, during the fan-out
    counts.quiet = True
    assert freezer.step()
    assert ref() is None


def test_garbage_not_from_connections_is_freed_after_every_seconds() -> None:
    counts, connections = Counts(), list[Connection]()
    freezer = counts.freezer(every=600)
    ref = _open(counts, connections)
    freezer.step()
    connections.clear()  # died in its cycle, but no connection closed
    counts.now = 599
    assert not freezer.step()
    assert ref() is not None
    counts.now = 600
    assert freezer.step()
    assert ref() is None


def _state(**settings: float) -> State:
    state = SimpleNamespace(settings=Settings(**settings),  # type: ignore[arg-type]
                            published_at=time.monotonic())
    return cast(State, state)


def test_the_setting_turns_it_off_and_the_server_thaws_only_between_ticks() -> None:
    assert freezer_of(_state(gc_freeze_period=0)) is None
    state = _state(gc_freeze_period=0.5, interval=20)
    freezer = freezer_of(state)
    assert freezer is not None
    assert freezer.period == 0.5
    assert freezer.quiet()  # a tick was just published: the next is 20 s away
    state.published_at -= 15
    assert not freezer.quiet()  # the next tick is due within 5 s
    state.published_at -= 30
    assert freezer.quiet()  # no tick for two intervals: no fan-out either
    sockets = count_sockets()
    assert count_sockets() is sockets  # one count per process
    closed, open_ = freezer.closed(), freezer.open()
    sockets.opened += 7
    sockets.closed += 3
    assert (freezer.closed(), freezer.open()) == (closed + 3, open_ + 4)


def test_a_few_closed_connections_are_freed_once_closes_stop() -> None:
    """Fewer than ``floor`` closed, with one connection left open (a flood's end): the
    first quiet step with no new close thaws, so no garbage stays frozen after a burst."""
    counts, connections = Counts(), list[Connection]()
    freezer = counts.freezer(floor=64, every=0)
    refs = [_open(counts, connections) for _ in range(4)]
    freezer.step()
    for _ in range(3):
        _close(counts, connections)
        assert not freezer.step()  # still closing: below the floor, no thaw
    assert all(ref() is not None for ref in refs)
    assert freezer.step()  # no close since the last step
    assert [ref() is None for ref in refs] == [True, True, True, False]
    assert not freezer.step()  # nothing closed since: frozen again, no thaw
