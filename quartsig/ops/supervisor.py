"""One supervisor for every long-lived task: none may die silently (issue #20.1).

A loop that dies on one bad Redis entry or one unexpected exception used to end for good
while health said ``ok``: the collector stopped, the lease was still renewed, every client
froze. Under :class:`Supervisor` an exception is logged with its traceback (sparsely when it
repeats), counted, and the task starts again after a backoff that grows while it keeps
failing. A task that has failed :data:`FAILING_AFTER` times in a row, without running
:data:`SETTLE` seconds in between, is *failing*: health names it, clients hear ``degraded``
and, for the collector, the node stops leading (see :mod:`quartsig.state`).

The bookkeeping is pure (:class:`Record`, :func:`backoff`, clock passed in); only
:meth:`Supervisor.spawn`'s loop touches asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from quartsig.ops.logs import Sparse

log = logging.getLogger(__name__)

#: Failures in a row after which a task counts as failing.
FAILING_AFTER = 3
#: Seconds a (re)started task must run for its earlier failures to be forgiven.
SETTLE = 30.0
#: The first restart's delay, doubled per failure in a row up to ``BACKOFF_MAX``.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0

Factory = Callable[[], Coroutine[Any, Any, None]]


def backoff(streak: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> float:
    """Seconds before restarting a task that has just failed ``streak`` times in a row.

    Doubling keeps a task that fails at once (a bad entry read on every start) from
    spinning a core and filling the log, while a one-off fault costs half a second.
    """
    return float(min(cap, base * 2 ** max(0, streak - 1)))


@dataclass
class Record:
    """What the supervisor knows of one task: enough for health, metrics and the backoff."""

    name: str
    failures: int = 0
    streak: int = 0
    restarts: int = 0
    running: bool = False
    started: float = 0.0
    last_error: str = ""

    def start(self, now: float) -> None:
        self.running, self.started = True, now

    def fail(self, now: float, error: BaseException, settle: float) -> None:
        """Count a failure; a task that ran ``settle`` seconds first starts a new streak."""
        if now - self.started >= settle:
            self.streak = 0
        self.failures += 1
        self.streak += 1
        self.running = False
        self.last_error = f"{type(error).__name__}: {error}"

    def failing(self, now: float, threshold: int, settle: float) -> bool:
        """Failed ``threshold`` times in a row and not yet run ``settle`` seconds since."""
        if self.streak < threshold:
            return False
        return not (self.running and now - self.started >= settle)


@dataclass
class Supervisor:
    """Runs named tasks, restarting them with backoff when they raise.

    ``on_failure(name)`` is called for every failure (the metrics count it);
    ``on_change()`` when the set of failing tasks may have changed (the state tells
    clients and the lease). A task that returns has ended on purpose (its owner is
    stopping it) and is not restarted.
    """

    on_failure: Callable[[str], None] = lambda name: None
    on_change: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.monotonic
    failing_after: int = FAILING_AFTER
    settle: float = SETTLE
    backoff_base: float = BACKOFF_BASE
    backoff_max: float = BACKOFF_MAX
    records: dict[str, Record] = field(default_factory=dict)
    _sparse: dict[str, Sparse] = field(default_factory=dict)

    def spawn(self, name: str, factory: Factory) -> asyncio.Task[None]:
        """Run ``factory()`` as task ``name`` under supervision; cancel the returned task to
        end it. ``factory`` is called again for each restart, so it must build a fresh
        coroutine (pass ``self._loop``, not ``self._loop()``)."""
        self.records[name] = Record(name)
        self._sparse[name] = Sparse(clock=self.clock)
        return asyncio.create_task(self._supervise(name, factory), name=f"quartsig-{name}")

    def failing(self) -> list[str]:
        """The names of the tasks that keep failing, sorted."""
        now = self.clock()
        return sorted(name for name, record in self.records.items()
                      if record.failing(now, self.failing_after, self.settle))

    def is_failing(self, name: str) -> bool:
        record = self.records.get(name)
        return record is not None and record.failing(self.clock(), self.failing_after,
                                                     self.settle)

    async def _supervise(self, name: str, factory: Factory) -> None:
        record = self.records[name]
        while True:
            if record.restarts:
                log.info("task %s restarted (%d failures so far)", name, record.failures)
            record.start(self.clock())
            work = asyncio.ensure_future(factory())
            try:
                if record.streak >= self.failing_after:
                    # Told failing: say so again as soon as it has settled.
                    done, _ = await asyncio.wait({work}, timeout=self.settle)
                    if not done:
                        self.on_change()
                await work
            except asyncio.CancelledError:
                work.cancel()
                raise
            except Exception as error:
                record.fail(self.clock(), error, self.settle)
                self.on_failure(name)
                if (held := self._sparse[name].due()) is not None:
                    # The traceback once per streak; a repeat is one line with a count.
                    log.error("task %s failed (failure %d in a row; %d more since the last "
                              "report): %s; restarting it", name, record.streak, held,
                              record.last_error, exc_info=record.streak == 1)
                if record.streak >= self.failing_after:
                    self.on_change()
            else:
                record.running = False
                log.debug("task %s ended", name)
                return
            await asyncio.sleep(backoff(record.streak, self.backoff_base, self.backoff_max))
            record.restarts += 1
