"""Whether a node can serve fresh data: the pure rules behind ``/readyz`` and ``/healthz``.

A load balancer must stop sending users to a node whose data froze (Redis unreachable, no
publication for longer than the collector could take, a task that keeps failing), and must
not take a node out for what its users never notice (the account database: open sockets
keep their data; new logins get their documented refusal). These rules say which, and why,
so ``/healthz`` can name the check that fails (issue #24.2).
"""

from __future__ import annotations

#: The order checks are reported in.
CHECKS = ("redis", "data", "tasks")


def stale_after(interval: float, lease_ttl: float, *, clustered: bool) -> float:
    """Seconds without a publication after which a node's data counts as stale.

    Three intervals cover one slow tick (it may take 0.9 of one) and the wait for the next;
    in a cluster a leader may die just after publishing, and its successor takes the lease
    within one TTL and publishes within one more tick, so two TTLs are added.
    """
    return 3 * interval + (2 * lease_ttl if clustered else 0.0)


def failures(*, redis: str, data_age: float, stale_after: float,
             failing: list[str]) -> dict[str, str]:
    """The failing checks, each with a one-line reason; empty when all pass."""
    found: dict[str, str] = {}
    if redis != "ok":
        found["redis"] = f"Redis {redis}"
    if data_age > stale_after:
        found["data"] = f"no publication for {data_age:.0f} s (stale after {stale_after:.0f} s)"
    if failing:
        found["tasks"] = f"failing: {', '.join(failing)}"
    return found


def degraded_reason(found: dict[str, str]) -> str | None:
    """What clients are told (``degraded``) for ``found``, or ``None`` when all is well."""
    if not found:
        return None
    return "; ".join(found[check] for check in CHECKS if check in found)


def report(found: dict[str, str], names: tuple[str, ...] = CHECKS) -> dict[str, object]:
    """The ``checks`` and ``failing`` fields of a health answer: every check, ``ok`` or why."""
    return {"checks": {name: found.get(name, "ok") for name in names},
            "failing": [name for name in names if name in found]}
