"""The app-lifetime objects: remembered admissions and the account check that revokes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from cryptography.fernet import Fernet

from quartsig import runtime as runtime_module
from quartsig.config import Settings
from quartsig.runtime import Admitted, Runtime
from quartsig.tokens import TokenAuthority


class Accounts:
    """An account table in memory that counts how often it is asked."""

    def __init__(self, active: set[int]) -> None:
        self.active = set(active)
        self.disabled: set[int] = set()
        self.lookups = 0
        self.fail = False

    async def is_active(self, tg_id: int) -> bool:
        self.lookups += 1
        if self.fail:
            raise ConnectionError("database down")
        return tg_id in self.active

    def disable(self, tg_id: int) -> None:
        self.active.discard(tg_id)
        self.disabled.add(tg_id)

    async def disabled_since(self, when: datetime) -> set[int]:
        return set(self.disabled)


class Sink:
    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    def deliver(self, key: Any, piece: Any) -> None: ...

    def discard(self, key: Any) -> None: ...

    def send(self, text: str) -> None: ...

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def make_runtime(table: Accounts) -> Runtime:
    settings = Settings(secret_keys=(Fernet.generate_key().decode(),))
    return Runtime(
        settings=settings,
        tokens=TokenAuthority(settings.secret_keys, 60),
        profiles={"full": object()},  # type: ignore[dict-item]
        screeners={},
        account_active=table.is_active,
        disabled_since=table.disabled_since,
    )


async def test_a_reconnecting_account_is_admitted_without_asking_the_database_again():
    table = Accounts({42})
    runtime = make_runtime(table)
    assert [await runtime.admit(42) for _ in range(5)] == [True] * 5
    assert table.lookups == 1


async def test_unknown_and_disabled_accounts_are_asked_for_every_time():
    table = Accounts({42})
    table.disable(7)
    runtime = make_runtime(table)
    assert [await runtime.admit(7), await runtime.admit(7), await runtime.admit(99)] == [False] * 3
    assert table.lookups == 3


async def test_the_account_check_revokes_a_remembered_admission_and_closes_the_connection():
    table = Accounts({42})
    runtime = make_runtime(table)
    sink = Sink()
    assert await runtime.admit(42)
    runtime.hub.attach(sink, 42)
    table.disable(42)
    assert await runtime.admit(42)  # not checked yet: as for a connected client
    assert await runtime.check_accounts() == 1
    assert sink.closed == (4403, "account disabled")
    assert not await runtime.admit(42)
    assert table.lookups == 2


async def test_a_remembered_account_gets_in_while_the_database_is_down_others_do_not():
    table = Accounts({42, 43})
    runtime = make_runtime(table)
    assert await runtime.admit(42)
    table.fail = True
    assert await runtime.admit(42)
    with pytest.raises(ConnectionError):
        await runtime.admit(43)


def test_admissions_expire(monkeypatch: pytest.MonkeyPatch):
    now = [1000.0]
    monkeypatch.setattr(runtime_module.time, "monotonic", lambda: now[0])
    admitted = Admitted(ttl=10.0)
    admitted.add(42)
    now[0] += 9.9
    assert 42 in admitted
    now[0] += 0.2
    assert 42 not in admitted
    assert len(admitted) == 0


def test_admissions_are_bounded_oldest_first():
    admitted = Admitted(limit=3)
    for tg_id in (1, 2, 3):
        admitted.add(tg_id)
    admitted.add(1)  # seen again: now the newest
    admitted.add(4)
    assert [tg_id in admitted for tg_id in (1, 2, 3, 4)] == [True, False, True, True]
    assert len(admitted) == 3
    admitted.forget([3, 99])
    assert 3 not in admitted
