"""Budgets and backoff with a hand-moved clock: no sleeping."""

from __future__ import annotations

import random

import pytest

from quartsig.access.admission import KeyQuota
from quartsig.feed.budget import Backoff, RequestBudget
from tests.support.clocks import HandClock


def test_budget_grants_its_burst_then_refills_at_its_rate() -> None:
    clock = HandClock()
    budget = RequestBudget(60, burst=5, clock=clock)
    assert budget.grant(3) == 3
    assert budget.grant(3) == 2  # partial: what is left
    assert budget.grant(1) == 0
    clock.now += 2.0  # 60 a minute: one a second
    assert budget.grant(5) == 2
    clock.now += 3600
    assert budget.available() == 5  # never above the burst


def test_quota_tiers_early_then_tick_then_refuse() -> None:
    clock = HandClock()
    quota = KeyQuota(limit=4, early=2, clock=clock)
    verdicts = [quota.admit("alice", n) for n in range(6)]
    assert verdicts == ["early", "early", "tick", "tick", "refuse", "refuse"]
    assert quota.admit("alice", 0) == "early"  # asking again is free and gets the same answer
    assert quota.admit("alice", 3) == "tick"
    assert quota.admit("bob", 9) == "early"  # per account


def test_quota_window_slides() -> None:
    clock = HandClock()
    quota = KeyQuota(limit=2, early=1, window=60, clock=clock)
    assert [quota.admit(1, n) for n in range(3)] == ["early", "tick", "refuse"]
    clock.now += 61
    assert quota.admit(1, 10) == "early"
    quota.prune()
    assert len(quota) == 1
    clock.now += 61
    quota.prune()
    assert len(quota) == 0


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    clock = HandClock()
    backoff = Backoff(4.0, 60.0, clock=clock, rng=random.Random(1))
    assert not backoff.active() and backoff.wait() == 0
    waits = []
    for _ in range(8):
        waits.append(backoff.failed() - clock.now)
    for step, wait in enumerate(waits):
        nominal = min(60.0, 4.0 * 2**step)
        assert nominal / 2 <= wait <= nominal
    assert backoff.active() and backoff.steps == 8
    backoff.succeeded()
    assert not backoff.active() and backoff.wait() == 0


def test_backoff_honours_retry_after_within_the_cap() -> None:
    clock = HandClock()
    backoff = Backoff(1.0, 120.0, clock=clock, rng=random.Random(2))
    assert backoff.failed(retry_after=30.0) - clock.now == pytest.approx(30.0)
    assert backoff.failed(retry_after=86400.0) - clock.now == pytest.approx(120.0)
