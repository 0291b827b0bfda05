"""The account gate: remembered admissions, and the check that revokes them."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet

from quartsig.access.admission import Gate
from quartsig.access.tokens import TokenAuthority
from quartsig.config import Settings
from quartsig.domain.expiring import Expiring
from quartsig.state import State


class Accounts:
    """An account table in memory that counts how often it is asked."""

    def __init__(self, active: set[int]) -> None:
        self.active = set(active)
        self.disabled: set[int] = set()
        self.lookups = 0
        self.checked: list[set[int]] = []
        self.fail = False

    async def is_active(self, tg_id: int) -> bool:
        self.lookups += 1
        if self.fail:
            raise ConnectionError("database down")
        return tg_id in self.active

    def disable(self, tg_id: int) -> None:
        self.active.discard(tg_id)
        self.disabled.add(tg_id)

    async def inactive_among(self, tg_ids: Any) -> set[int]:
        self.checked.append(set(tg_ids))
        return set(tg_ids) - self.active


class Sink:
    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    def deliver(self, key: Any, piece: Any) -> None: ...

    def discard(self, key: Any) -> None: ...

    def send(self, text: str) -> None: ...

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def make_state(table: Accounts) -> State:
    settings = Settings(secret_keys=(Fernet.generate_key().decode(),))
    return State(
        settings=settings,
        tokens=TokenAuthority(settings.secret_keys, 60),
        profiles={"full": object()},  # type: ignore[dict-item]
        screeners={},
        gate=Gate(table.is_active, table.inactive_among),
    )


async def test_a_reconnecting_account_is_admitted_without_asking_the_database_again():
    table = Accounts({42})
    state = make_state(table)
    assert [await state.gate.admit(42) for _ in range(5)] == [True] * 5
    assert table.lookups == 1


async def test_unknown_and_disabled_accounts_are_asked_for_every_time():
    table = Accounts({42})
    table.disable(7)
    state = make_state(table)
    admitted = [await state.gate.admit(7), await state.gate.admit(7), await state.gate.admit(99)]
    assert admitted == [False] * 3
    assert table.lookups == 3


async def test_the_account_check_revokes_a_remembered_admission_and_closes_the_connection():
    table = Accounts({42})
    state = make_state(table)
    sink = Sink()
    assert await state.gate.admit(42)
    state.hub.attach(sink, 42)
    table.disable(42)
    assert await state.gate.admit(42)  # not checked yet: as for a connected client
    assert await state.check_accounts() == 1
    assert sink.closed == (4403, "account disabled")
    assert not await state.gate.admit(42)
    assert table.lookups == 2


async def test_a_remembered_account_gets_in_while_the_database_is_down_others_do_not():
    table = Accounts({42, 43})
    state = make_state(table)
    assert await state.gate.admit(42)
    table.fail = True
    assert await state.gate.admit(42)
    with pytest.raises(ConnectionError):
        await state.gate.admit(43)


def test_entries_expire_on_the_injected_clock():
    now = [1000.0]
    admitted: Expiring[int, bool] = Expiring(ttl=10.0, clock=lambda: now[0])
    admitted.add(42, True)
    now[0] += 9.9
    assert 42 in admitted
    now[0] += 0.2
    assert 42 not in admitted
    assert len(admitted) == 0


def test_entries_are_bounded_oldest_first():
    admitted: Expiring[int, bool] = Expiring(ttl=60.0, limit=3)
    for tg_id in (1, 2, 3):
        admitted.add(tg_id, True)
    admitted.add(1, True)  # seen again: now the newest
    admitted.add(4, True)
    assert [tg_id in admitted for tg_id in (1, 2, 3, 4)] == [True, False, True, True]
    assert len(admitted) == 3
    admitted.forget([3, 99])
    assert 3 not in admitted


async def test_the_check_asks_about_connected_and_remembered_accounts_by_their_flag():
    """Whatever stamped the rows: the check reads ``active`` for everyone it could let in."""
    table = Accounts({42, 43, 44})
    state = make_state(table)
    for tg_id in (42, 43):
        assert await state.gate.admit(tg_id)
    sink = Sink()
    state.hub.attach(sink, 44)  # connected, its admission long forgotten
    state.gate.admitted.forget([44])
    table.disable(43)  # remembered, not connected
    table.disable(44)
    assert await state.check_accounts() == 1
    assert table.checked == [{42, 43, 44}]
    assert sink.closed == (4403, "account disabled")
    assert 43 not in state.gate.admitted and 42 in state.gate.admitted


async def test_disabling_through_the_gate_forgets_at_once():
    table = Accounts({42})
    disabled: list[int] = []

    async def disable(tg_id: int) -> None:
        disabled.append(tg_id)
        table.disable(tg_id)

    gate = Gate(table.is_active, table.inactive_among, disable)
    assert await gate.admit(42)
    await gate.disable(42)
    assert disabled == [42] and 42 not in gate.admitted
    assert not await gate.admit(42)


# -- new keys -----------------------------------------------------------------------------


def _admit(quota: Any, key: str, **facts: Any) -> str:
    from quartsig.access.admission import admit_new_key

    given = {"free": False, "watched": False, "held": 0, "count_watched": lambda: 0,
             "max_keys": 10, "cluster_keys": 0, **facts}
    return admit_new_key(quota, "alice", key, id=7, **given)


def test_a_new_key_meets_the_key_cap_then_the_accounts_quota() -> None:
    from quartsig.access.admission import KeyQuota
    from quartsig.domain.protocol import ProtocolError

    now = [0.0]
    quota = KeyQuota(limit=2, early=1, clock=lambda: now[0])
    assert _admit(quota, "a") == "early"
    assert _admit(quota, "b") == "tick"
    with pytest.raises(ProtocolError) as refused:
        _admit(quota, "c")
    assert (refused.value.code, refused.value.id) == ("quota_exceeded", 7)
    assert "at most 2 new keys" in refused.value.message
    # Free keys (data, or held already) cost nothing, whatever the quota says.
    assert _admit(quota, "d", free=True, cluster_keys=99) == "early"
    with pytest.raises(ProtocolError) as full:  # the cluster is full: refused before the quota
        _admit(KeyQuota(limit=5), "e", cluster_keys=10)
    assert full.value.code == "key_limit"
    assert _admit(KeyQuota(limit=5), "e", cluster_keys=10, watched=True) == "early"


def test_this_nodes_key_cap_counts_watched_keys_only_when_it_holds_enough() -> None:
    from quartsig.access.admission import KeyQuota
    from quartsig.domain.protocol import ProtocolError

    counted: list[int] = []

    def count(watched: int) -> Any:
        return lambda: counted.append(watched) or watched

    assert _admit(KeyQuota(limit=5), "a", held=9, count_watched=count(9)) == "early"
    assert counted == []  # far from the cap: no walk over every key
    assert _admit(KeyQuota(limit=5), "a", held=10, count_watched=count(3)) == "early"
    with pytest.raises(ProtocolError):  # held and watched at the cap: cached ones can't go
        _admit(KeyQuota(limit=5), "a", held=10, count_watched=count(10))
    assert counted == [3, 10]
