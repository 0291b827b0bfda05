"""The recorder: the thin async shell around the evaluator, on the node that collects.

The collector calls :meth:`Recorder.on_published` with each batch it published and the term it
published under; that only queues the batch's values (the keys whose data changed), with a copy
of what their rules read (for a key whose changes the batch carries, only the outputs they read
that changed: :meth:`Recorder._snapshot`). One writer
task takes them in order, evaluates them (sync, cheap, off the tick's path) and writes their
triggers, with the values of the rules' keys it saw, in one fenced transaction per burst
(:func:`quartsig.alerts.storage.write_triggers`). No change is evaluated twice or skipped.

A new term (this node just became the leader) first starts every rule from the values the last
leader wrote it saw (:class:`~quartsig.alerts.storage.AlertSeen`): a change that leader
published but died before recording is then a change here, and is recorded once (a trigger it
did record has the same dedupe key).

A write that fails for a reason that may pass (the database away) is tried again with growing
pauses, in order, without blocking the collector; a write refused by the fence is dropped: a
newer leader exists, and what this node saw is that leader's to record. Rules come from the
database: all at start, then again whenever the rule table changes (any node may have changed
it), checked every ``reload`` seconds, or at once after a change made on this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from quartsig.alerts import storage
from quartsig.alerts.evaluation import Evaluator, Trigger, only
from quartsig.domain.model import Batch, Key

log = logging.getLogger(__name__)

#: Pauses between tries of a failed write (seconds), the last one repeating.
RETRY_PAUSES = (0.1, 0.5, 2.0, 5.0)
#: Triggers written in one transaction at most (a burst queued while the database was slow).
MAX_WRITE = 1_000
#: How the recorder's two tasks are run: the app passes its supervisor's ``spawn`` (a task that
#: raises is logged, counted and restarted); alone they are plain tasks.
Spawn = Callable[[str, Callable[[], Coroutine[Any, Any, None]]], "asyncio.Task[None]"]


def _plain(name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
    return asyncio.create_task(factory(), name=f"quartsig-{name}")


#: One publication as queued: its values (key, data or the rules' outputs copied, ts), and
#: for keys whose changes are known, the changed outputs their rules read (new values).
Publication = tuple[list[tuple[Key, Any, int]], dict[Key, dict[str, Any]]]

#: Batches of triggers the queue holds before the oldest are dropped (logged): a database away
#: for long must not grow memory without bound.
MAX_QUEUED = 10_000


class Recorder:
    def __init__(
        self,
        *,
        reload: float = 5.0,
        storm: tuple[int, float] = (15, 180.0),
        write: Callable[..., Awaitable[Any]] = storage.write_triggers,
        on_written: Callable[[Sequence[int]], object] | None = None,
        spawn: Spawn = _plain,
    ) -> None:
        self.evaluator = Evaluator(storm)
        self.reload = reload
        self.write = write
        #: Called (and awaited if it returns an awaitable) with the ids of the triggers a
        #: committed write made: the delivery worker wakes up, or announces them.
        self.on_written = on_written
        self.spawn = spawn
        #: Published values waiting to be evaluated and written, with their terms, oldest first.
        self.queue: deque[tuple[Publication, int]] = deque()
        #: The term whose publications this recorder evaluates (None: none yet).
        self.term: int | None = None
        self._queued = asyncio.Event()
        #: Set whenever the queue is empty and nothing is being written: tests wait on it.
        self.idle = asyncio.Event()
        self.idle.set()
        self.written = 0
        self.fenced = 0
        #: Set after each (re)load of the rules: tests wait on it.
        self.loaded = asyncio.Event()
        self._changed = asyncio.Event()
        self._stamp: tuple[int, Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await storage.ensure_fence()
        await self.load()
        self._tasks = [self.spawn("alerts-writer", self._writing),
                       self.spawn("alerts-rules", self._reloading)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def rules_changed(self) -> None:
        """A rule was created, edited or deleted on this node: reload now."""
        self._changed.set()

    async def load(self) -> None:
        """Watch the database's live rules (unchanged rules keep their tracks)."""
        self._stamp = await storage.rules_stamp()
        self.evaluator.replace_all(await storage.live_rules())
        self.loaded.set()

    def standing(self) -> set[Key]:
        """The keys the rules watch: the collector fetches them whether or not a board is
        open, which is the point of an alert."""
        return self.evaluator.keys

    def on_published(self, batch: Batch, term: int) -> None:
        """The collector's hook: queue the batch's values for the writer, which evaluates
        them in order. Costs the collector a look-up per key and, for keys with rules, a copy
        of the outputs their rules read that changed (:meth:`_snapshot`)."""
        if not batch.values:
            return
        if len(self.queue) >= MAX_QUEUED:
            self.queue.popleft()
            log.error("alerts: database unreachable for long, a publication dropped")
            # What it changed is not in the next one's changes: its keys are seen in full.
            self.evaluator.unsynced.update(self.evaluator.keys)
        self.idle.clear()
        self.queue.append((self._snapshot(batch, term), term))
        self._queued.set()

    def _snapshot(self, batch: Batch, term: int) -> Publication:
        """What the rules of each key read, copied now: a profile may update a key's data
        in place at the next tick (``full`` does), and a publication queued behind a slow
        write must be evaluated with its own values. Keys without rules keep their data (it
        only feeds the latest values, where a later value is right).

        A key whose changes the batch carries (``Batch.changes``: the collector's, not
        carried over Redis) and whose tracks hold its previous values gets only the outputs
        its rules read that changed, and the evaluator looks only at the tracks reading them;
        any other key of rules (its first values, a rule just added, a new term whose rules
        restart from what the last leader saw) gets all of them, evaluated in full."""
        evaluator = self.evaluator
        reads_of = evaluator._reads.get
        unsynced = evaluator.unsynced
        # Until the writer has started this term's rules, nothing is known to be in step.
        known = batch.changes if term == self.term else {}
        values: list[tuple[Key, Any, int]] = []
        changes: dict[Key, dict[str, Any]] = {}
        for item in batch.values:
            key = item[0]
            reads = reads_of(key)
            if reads is None:
                values.append(item)
                continue
            moved = known.get(key)
            if moved is None or key in unsynced:
                data = item[1]
                values.append((key, {name: data.get(name) for name in reads}, item[2]))
                continue
            delta = moved[1]
            changed = {name: delta[name] for name in reads if name in delta}
            values.append((key, changed, item[2]))
            changes[key] = changed
        return values, changes

    async def _sync(self, term: int) -> None:
        """A new term (or the first): start the rules from what the last leader wrote it saw,
        so a change it published but could not record is seen as a change here."""
        for attempt in range(1_000_000):
            try:
                latest = await storage.seen_values()
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                pause = RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)]
                log.warning("alerts: cannot read the last values (%s); again in %gs",
                            error.__class__.__name__, pause)
                await asyncio.sleep(pause)
        self.evaluator.restart(latest)
        self.term = term

    def _evaluate(self, publication: Publication,
                  seen: dict[Key, tuple[dict[str, Any], int]]) -> list[Trigger]:
        """The triggers of one publication; ``seen`` gets its rule keys' read outputs."""
        evaluator = self.evaluator
        values, changes = publication
        try:
            triggers = evaluator.evaluate(values, changes)
        except Exception:
            log.exception("alert evaluation failed; this publication fires nothing")
            return []
        reads_of, latest = evaluator._reads.get, evaluator.latest
        for key, _, ts in values:
            reads = reads_of(key)
            if reads is not None:  # the key's values as the evaluator now holds them
                seen[key] = (only(latest[key][0], reads), ts)
        return triggers

    async def _writing(self) -> None:
        while True:
            if not self.queue:
                self.idle.set()
                self._queued.clear()
                await self._queued.wait()
                continue
            term = self.queue[0][1]
            if term != self.term:
                await self._sync(term)
            # What queued meanwhile under the same term goes in the same transaction: one
            # commit for a burst instead of one per publication.
            triggers: list[Trigger] = []
            seen: dict[Key, tuple[dict[str, Any], int]] = {}
            while self.queue and self.queue[0][1] == term and len(triggers) < MAX_WRITE:
                triggers += self._evaluate(self.queue.popleft()[0], seen)
            if triggers or seen:
                await self._write(triggers, term, seen)

    async def _write(self, triggers: list[Trigger], term: int,
                     seen: dict[Key, tuple[dict[str, Any], int]]) -> None:
        for attempt in range(1_000_000):
            try:
                written = await self.write(triggers, term, seen=seen)
            except storage.Fenced:
                self.fenced += len(triggers)
                log.warning("alerts: %d triggers refused by the fence (term %d): a newer "
                            "leader records them", len(triggers), term)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                pause = RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)]
                log.warning("alerts: writing %d triggers failed (%s); again in %gs",
                            len(triggers), error.__class__.__name__, pause)
                await asyncio.sleep(pause)
                continue
            self.written += len(triggers)
            ids = written.triggers if isinstance(written, storage.Written) else []
            if triggers and self.on_written is not None:
                try:
                    told = self.on_written(ids)
                    if inspect.isawaitable(told):
                        await told
                except asyncio.CancelledError:
                    raise
                except Exception:  # written is written: the poll finds them
                    log.exception("alerts: telling the deliverers failed")
            return

    async def _reloading(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.reload):
                    await self._changed.wait()
            self._changed.clear()
            try:
                if await storage.rules_stamp() != self._stamp:
                    await self.load()  # prunes too
                else:
                    self.evaluator.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("alerts: cannot reload rules; keeping the ones loaded",
                            exc_info=True)
