"""The subscription hub: who watches which key, what each key last held, and fan-out.

Every method is synchronous and runs on the event loop, so a subscribe, an
unsubscribe or a close can only ever land *between* two collector steps, never
inside one: the ordering guarantee the seed bought with a task queue, with no
queue to grow or reorder.

Data is state, not events. Each key keeps its last data; a change is diffed
against it, encoded once, and the same text handed to every subscriber. A
connection that falls behind merges its pending pieces per key (see
:mod:`quartsig.fanout.connection`), so everyone converges on the current state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from quartsig.config import Settings
from quartsig.domain import protocol
from quartsig.domain.model import Batch, Key

SNAPSHOT = "snapshot"
UPDATE = "update"
_MISSING = object()


@dataclass(slots=True)
class Piece:
    """One pending snapshot or update for one key; ``text`` is shared until merged."""

    type: str
    data: Mapping[str, Any]
    ts: int
    text: str | None

    def encoded(self, key: Key) -> str:
        if self.text is None:
            self.text = protocol.data_frame(
                self.type, key.symbol, key.tf, key.profile, self.data, self.ts
            )
        return self.text

    def merge(self, later: Piece) -> Piece:
        """Conflate: this piece followed by ``later`` as one piece, as a client would apply them."""
        if later.type == SNAPSHOT:
            return later
        return Piece(self.type, {**self.data, **later.data}, later.ts, None)


class Sink(Protocol):
    """What the hub needs from a connection (implemented by :class:`connection.Connection`)."""

    def deliver(self, key: Key, piece: Piece) -> None: ...

    def discard(self, key: Key) -> None: ...

    def send(self, text: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class TooManySubscriptions(Exception):
    pass


@dataclass(slots=True, eq=False)
class Entry:
    """A key's cached state. Kept for ``retain`` seconds after its last subscriber leaves,
    so that a tab that is hidden and shown again gets its snapshot at once."""

    key: Key
    data: dict[str, Any] | None = None
    ts: int = 0
    snapshot: Piece | None = None
    subscribers: set[Sink] = field(default_factory=set)
    idle_since: float | None = None
    #: The error frame of the key's failing profile, for newcomers; cleared by fresh data.
    failure: str | None = None


def _error_text(key: Key, code: str, message: str) -> str:
    return protocol.key_error(key, code, message)


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``new`` whose values differ from ``old`` (absent counts as different).

    Measured against C-level alternatives (a set difference of the items, a pairwise
    ``map(ne, ...)`` with ``compress``): on profile data this comprehension was fastest.
    It is what every shaped diff (:func:`shaped_diff`) falls back to.
    """
    return {name: value for name, value in new.items() if old.get(name, _MISSING) != value}


Diff = Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]

#: Most keys a data object may have for a diff to be generated for its shape (a local per
#: value, twice); a bigger one is diffed by :func:`diff`.
SHAPED_MAX_KEYS: Final = 512


def shaped_diff(keys: Sequence[str]) -> Diff:
    """:func:`diff`, generated for data whose keys are exactly ``keys`` in that order.

    A profile's compute returns the same keys in the same order every time (``full``: 126),
    so the diff need not look each one up in the old dict: both dicts' values are unpacked
    into locals and compared pairwise, one straight-line comparison each. The result is
    built one of two ways, whichever suited the previous call best: while few values change,
    each changed one is added to an empty dict; while most change, the new dict is copied (a
    C-level clone of its table) and each unchanged value deleted from the copy, which spares
    growing a dict to a hundred entries. Either is the same dict as :func:`diff`'s, key order
    included, with the very same values (``a != b``: the comprehension's test). On bench.tick's
    ``full`` data (72 % of a changed key's values change) it is about 0.8x of the
    comprehension, with few changes 0.9x. Data of another shape (a plugin whose keys vary)
    goes to :func:`diff`. tests/test_hub.py checks both ways against :func:`diff` on arbitrary
    pairs. Keys reach the source text only as ``repr`` of exact ``str`` objects.
    """
    names = tuple(keys)
    if not 0 < len(names) <= SHAPED_MAX_KEYS or any(type(name) is not str for name in names):
        return diff
    old = ", ".join(f"o{i}" for i in range(len(names)))
    new = ", ".join(f"n{i}" for i in range(len(names)))
    lines = [
        "def shaped(old, new):",
        "    if type(new) is not dict or [*old] != KEYS or [*new] != KEYS:",
        "        return diff(old, new)",
        f"    {old}, = old.values()",
        f"    {new}, = new.values()",
        "    if mostly[0]:",
        "        out = new.copy()",
    ]
    lines += [f"        if not o{i} != n{i}: del out[{name!r}]" for i, name in enumerate(names)]
    lines.append("    else:")
    lines.append("        out = {}")
    lines += [f"        if o{i} != n{i}: out[{name!r}] = n{i}" for i, name in enumerate(names)]
    lines.append(f"    mostly[0] = len(out) > {len(names) // 2}")
    lines.append("    return out")
    #: Whether most values changed in the previous call: which way this one builds its result.
    mostly = [False]
    scope: dict[str, Any] = {"KEYS": list(names), "diff": diff, "mostly": mostly}
    exec(compile("\n".join(lines), "<quartsig.fanout.hub shaped diff>", "exec"), scope)
    shaped: Diff = scope["shaped"]
    return shaped


class Hub:
    def __init__(
        self,
        *,
        max_subscriptions: int = Settings.max_subscriptions,  # the default lives in config
        retain: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_subscriptions = max_subscriptions
        self.retain = retain
        self.clock = clock
        self.entries: dict[Key, Entry] = {}
        self.subscriptions: dict[Sink, set[Key]] = {}
        self.users: dict[Sink, int] = {}
        #: Keys subscribed to that have no data yet; the collector fetches them early.
        self.fresh: set[Key] = set()
        #: Set whenever a key joins ``fresh``; whoever fetches early waits on it and clears it.
        self.fresh_added = asyncio.Event()
        self.status: tuple[str, str] = ("ok", "")
        #: While the collector backs off from throttling: when it tries next (Unix ms).
        self.retry_at: int | None = None
        #: Each profile's diff, generated for the shape of its first data (:func:`shaped_diff`).
        self._diffs: dict[str, Diff] = {}

    # -- connections ----------------------------------------------------------------------

    def attach(self, sink: Sink, user: int) -> None:
        self.subscriptions[sink] = set()
        self.users[sink] = user
        if self.status[0] != "ok":
            sink.send(self._status_text())

    def detach(self, sink: Sink) -> None:
        for key in self.subscriptions.pop(sink, ()):
            self._leave(sink, key)
        self.users.pop(sink, None)

    def subscribe(self, sink: Sink, key: Key, *, early: bool = True) -> bool:
        """Add ``key`` for ``sink``; False when it was already there (which is harmless).

        ``early=False``: a key nobody has data for waits for the next full tick instead of
        being fetched early (the subscriber's account spent its share of early fetches)."""
        keys = self.subscriptions[sink]
        if key in keys:
            return False
        if len(keys) >= self.max_subscriptions:
            raise TooManySubscriptions(f"at most {self.max_subscriptions} subscriptions")
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(key)
        else:
            # The entry's Key, not the one just parsed from this client's frame: every
            # subscriber of a key then shares one Key and its strings (~350 B a subscription).
            key = entry.key
        keys.add(key)
        entry.subscribers.add(sink)
        entry.idle_since = None
        if entry.data is None:
            if early and key not in self.fresh:
                self.fresh.add(key)
                self.fresh_added.set()
        else:
            sink.deliver(key, self._snapshot(entry))
        if entry.failure is not None:
            sink.send(entry.failure)  # its profile is failing: a newcomer is told too
        return True

    def unsubscribe(self, sink: Sink, key: Key) -> bool:
        keys = self.subscriptions.get(sink)
        if keys is None or key not in keys:
            return False
        keys.discard(key)
        self._leave(sink, key)
        sink.discard(key)
        return True

    def _leave(self, sink: Sink, key: Key) -> None:
        entry = self.entries.get(key)
        if entry is None:
            return
        entry.subscribers.discard(sink)
        if not entry.subscribers:
            self.fresh.discard(key)
            if entry.data is None and entry.failure is None:
                del self.entries[key]
            else:
                entry.idle_since = self.clock()

    # -- the collector's side -------------------------------------------------------------

    def demand(self) -> set[Key]:
        """The keys someone watches now: what the next tick must fetch."""
        return {key for key, entry in self.entries.items() if entry.subscribers}

    def apply(self, batch: Batch) -> int:
        """Everything a tick brought, in one synchronous step; how many keys changed."""
        changed = 0
        changes = batch.changes
        if changes:
            get = changes.get
            for key, data, ts in batch.values:
                changed += self.publish(key, data, ts, get(key))
        else:
            for key, data, ts in batch.values:
                changed += self.publish(key, data, ts)
        for key, code, message in batch.rejected:
            self.reject(key, code, message)
        for key, code, message in batch.failed:
            self.warn(key, code, message)
        for key, message, at in batch.deferred:
            self.defer(key, message, at)
        if batch.status is not None:
            self.set_status(*batch.status, retry_at=batch.retry_at)
        return changed

    def publish(
        self,
        key: Key,
        data: dict[str, Any],
        ts: int,
        known: tuple[dict[str, Any], dict[str, Any]] | None = None,
    ) -> bool:
        """Store ``data`` for ``key`` and send subscribers what changed. True if anything did.

        ``known``: the data the collector computed ``data``'s changes against, and those
        changes (:attr:`Batch.changes`); used only if the entry holds that very object, since
        anything else (a resync, another node's value) makes them a diff from the wrong base."""
        entry = self.entries.get(key)
        if entry is None:
            return False  # nobody watches it any more
        entry.failure = None
        if entry.data is None:
            entry.data, entry.ts, entry.snapshot = data, ts, None
            self.fresh.discard(key)
            if entry.subscribers:
                piece = self._snapshot(entry)
                for sink in entry.subscribers:
                    sink.deliver(key, piece)
            return True
        if known is not None and known[0] is entry.data:
            changes = known[1]
        else:
            differ = self._diffs.get(key.profile)
            if differ is None:
                differ = self._diffs[key.profile] = shaped_diff(tuple(data))
            changes = differ(entry.data, data)
        entry.data, entry.ts = data, ts
        if not changes:
            return False
        entry.snapshot = None
        if entry.subscribers:
            piece = Piece(UPDATE, changes, ts, None)
            piece.encoded(key)  # once, before fan-out: every subscriber shares this text
            for sink in entry.subscribers:
                sink.deliver(key, piece)
        return True

    def watched(self) -> int:
        """How many distinct keys someone watches (cheap when far from any limit)."""
        return sum(1 for entry in self.entries.values() if entry.subscribers)

    def reject(self, key: Key, code: str, message: str) -> None:
        """Drop ``key`` for everyone, telling each subscriber why (e.g. an unknown symbol)."""
        entry = self.entries.pop(key, None)
        self.fresh.discard(key)
        if entry is None:
            return
        text = _error_text(key, code, message)
        for sink in entry.subscribers:
            self.subscriptions[sink].discard(key)
            sink.discard(key)
            sink.send(text)

    def warn(self, key: Key, code: str, message: str) -> None:
        """Tell ``key``'s subscribers something is wrong with it, keeping their subscription
        (a failing profile: its data flows again, to the same subscribers, once it recovers).
        A newcomer is told too, until the key's next data."""
        entry = self.entries.get(key)
        if entry is None:
            return
        entry.failure = text = _error_text(key, code, message)
        for sink in entry.subscribers:
            sink.send(text)

    def standing(self, sink: Sink, key: Key) -> tuple[bool, bool]:
        """``(free, watched)`` for admitting ``key`` to ``sink``: it costs nothing (it has
        data, or ``sink`` holds it already); someone here subscribes to it."""
        entry = self.entries.get(key)
        if entry is None:
            return False, False
        return entry.data is not None or sink in entry.subscribers, bool(entry.subscribers)

    def defer(self, key: Key, message: str, at: int) -> None:
        """Tell ``key``'s subscribers its first data waits until ``at`` (Unix ms); they keep
        the subscription. Nothing is said once the key has data."""
        entry = self.entries.get(key)
        if entry is None or entry.data is not None or not entry.subscribers:
            return
        text = protocol.deferred(key, message, at)
        for sink in entry.subscribers:
            sink.send(text)

    def set_status(self, upstream: str, reason: str = "", retry_at: int | None = None) -> bool:
        """Tell every connection when the upstream's health changes, or, while it is not
        ``ok``, when the next try is; True if the health changed."""
        if upstream == "ok":
            retry_at = None
        if (upstream, reason) == self.status and retry_at == self.retry_at:
            return False
        changed_level = upstream != self.status[0]
        changed_retry = retry_at != self.retry_at
        self.status = (upstream, reason)
        self.retry_at = retry_at
        if changed_level or changed_retry:
            text = self._status_text()
            for sink in self.subscriptions:
                sink.send(text)
        return changed_level

    def sweep(self) -> int:
        """Forget cached keys nobody has watched for ``retain`` seconds; how many went."""
        cutoff = self.clock() - self.retain
        stale = [
            key
            for key, entry in self.entries.items()
            if entry.idle_since is not None and entry.idle_since <= cutoff
        ]
        for key in stale:
            del self.entries[key]
        return len(stale)

    def sinks_of(self, users: Iterable[int]) -> list[Sink]:
        wanted = set(users)
        return [sink for sink, user in self.users.items() if user in wanted]

    # -- helpers --------------------------------------------------------------------------

    def _snapshot(self, entry: Entry) -> Piece:
        if entry.snapshot is None:
            assert entry.data is not None
            entry.snapshot = Piece(SNAPSHOT, entry.data, entry.ts, None)
            entry.snapshot.encoded(entry.key)
        return entry.snapshot

    def _status_text(self) -> str:
        upstream, reason = self.status
        if self.retry_at is not None:
            return protocol.reply("status", upstream=upstream, reason=reason,
                                  retry_at=self.retry_at)
        return protocol.reply("status", upstream=upstream, reason=reason)
