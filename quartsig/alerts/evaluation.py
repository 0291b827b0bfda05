"""The evaluator: a publication's changed keys in, the triggers they cause out. Pure and sync.

It runs on the collector after every publication, so it must cost little and see each change
once: rules are indexed by key, and only the keys of the batch (the collector publishes only
keys whose data changed) are looked at. With the batch's changes (the collector's
``Batch.changes``, which the recorder on the collector has) only the rules reading an output
that changed are looked at; without them (or for a key whose tracks may not hold its previous
values, :attr:`Evaluator.unsynced`), an output that did not change costs one dictionary read and
one comparison for all the rules reading it (a :class:`Group`). A crossing's or a margin label's
step is skipped while the value stays in the range where it would move nothing
(:attr:`Track.lo`, :attr:`Track.hi`), and a whole group's while it stays in all of theirs: the
cost follows the rules that move, then the rules that fire (each through the gate: mute, expiry,
cool-down, frequency, storm).

Time is the data's own time (``ts`` of each value), never a clock: cool-downs, expiry and bars
then mean the same on a retry or on another leader, and tests move time by writing it in the
values.

Each (rule, key) pair has a :class:`Track`: the last value seen, the condition's memory (the
label held, or whether a crossing is armed) and when it last fired. A track is born on the
first value it sees and fires nothing then: a rule fires on a *change* it watched happen.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from functools import lru_cache
from typing import Any, Final, NamedTuple

from quartsig.alerts.bars import bar_open
from quartsig.alerts.rules import RANK, Crossing, LabelChange, Rule
from quartsig.domain.model import Key
from quartsig.domain.rules import label, number


class Trigger(NamedTuple):
    """One firing of a rule on a key: what moved, from what to what, in which bar. A named
    tuple: a frozen dataclass costs four times as much to build, and a publication may make
    thousands."""

    rule: Rule
    key: Key
    before: str
    after: str
    bar: int  # the bar's open, Unix ms (for "once per bar close": the bar that closed)
    ts: int  # the data's time, Unix ms
    value: Any  # the output's value that fired

    @property
    def transition(self) -> str:
        return f"{self.before}>{self.after}"

    @property
    def dedupe(self) -> str:
        """The trigger's identity (rule, rule version, key, transition, bar time): whoever
        evaluates the same change (a retry, the next leader) makes the same one, and the
        database's UNIQUE constraint on it keeps one. Two equal transitions of one rule on one
        key in one bar are therefore one trigger, whatever the frequency."""
        key = self.key
        text = "\x1f".join((str(self.rule.id), str(self.rule.version), key.profile,
                            key.symbol, key.tf, self.transition, str(self.bar)))
        return hashlib.sha256(text.encode()).hexdigest()


class Track:
    """The state of one rule on one key."""

    __slots__ = ("at_close", "bar", "condition", "fired_at", "fired_bar", "hi", "key", "last",
                 "limited", "lo", "memory", "once", "pending", "per_bar", "plain", "reads", "rule",
                 "seq", "step")

    def __init__(self, rule: Rule, key: Key, seq: int = 0) -> None:
        self.rule = rule
        #: The order of its making: triggers of one key come out in this order on either path.
        self.seq = seq
        self.key = key
        self.reads = rule.condition.reads
        self.condition: Any = rule.condition
        #: The condition's step function, chosen once rather than per value.
        self.step: Callable[[Any, Track, Any], tuple[str, str] | None] = (
            step_label if isinstance(rule.condition, LabelChange) else step_crossing)
        self.at_close = rule.frequency == "once_per_bar_close"
        #: A label without a margin: never quiet, and stepped in the evaluator's loop itself.
        self.plain = isinstance(rule.condition, LabelChange) and not rule.condition.margin
        #: The gate's questions about the rule, asked once: whether it may be silenced by
        #: mute, expiry or cool-down (:meth:`Evaluator._limited`), fires once per bar, or once.
        self.limited = rule.muted or rule.expires_at is not None or bool(rule.cooldown)
        self.per_bar = rule.frequency == "once_per_bar"
        self.once = rule.frequency == "only_once"
        self.last: Any = None  # the last value of ``reads`` seen
        self.memory: Any = None  # LabelChange: the label held; Crossing: armed (None: unknown)
        self.fired_at: float | None = None  # Unix seconds (data time)
        self.fired_bar: int | None = None
        self.bar: int | None = None  # once per bar close: the bar of ``pending``
        self.pending: Any = None  # once per bar close: the last value seen in ``bar``
        #: The quiet range: a float strictly between them moves nothing (a crossing armed and
        #: not beyond the level, or not yet back past it by the margin; a label with a margin
        #: that holds its label), so the evaluator skips the step; empty until the condition
        #: knows its state, and always for "once per bar close" (each of its values must
        #: reach the bar's bookkeeping).
        self.lo = math.inf
        self.hi = -math.inf


class Group:
    """The tracks of one key that read one output, in the order of their making, and the
    range where all of them are quiet (the intersection of their quiet ranges): a value there
    costs the whole group one comparison, however many rules it holds."""

    __slots__ = ("hi", "last", "lo", "quiets", "tracks")

    def __init__(self) -> None:
        self.tracks: list[Track] = []
        #: The value the group saw last (None: unknown, as after a track joined it): the same
        #: value again steps none of its tracks.
        self.last: Any = None
        self.lo = math.inf
        self.hi = -math.inf
        #: Whether all its tracks can be quiet (none is "once per bar close" or a label
        #: without margin): if not, its range stays empty and is never narrowed again.
        self.quiets = True

    def settle(self) -> None:
        """Take the tracks' quiet ranges as they are now (after some of them stepped)."""
        self.quiets = not any(t.plain or t.at_close for t in self.tracks)
        lo, hi = -math.inf, math.inf
        for track in self.tracks:
            if track.lo > lo:
                lo = track.lo
            if track.hi < hi:
                hi = track.hi
        self.lo, self.hi = lo, hi


def only(values: Mapping[str, Any], names: AbstractSet[str]) -> dict[str, Any]:
    """A copy of ``values`` holding exactly ``names`` (None for those it lacks). Mostly it
    holds exactly them already (what a key's rules read): then a plain copy, made in C."""
    if values.keys() == names:
        return dict(values)
    return {name: values.get(name) for name in names}


def held_label(held: str | None, rating: object, margin: float) -> str | None:
    """The label to hold for ``rating`` when ``held`` is held: the plain label, unless moving
    to it would not take the rating ``margin`` past the boundary crossed (hysteresis). A jump
    over several bands lands on the farthest band passed by the margin."""
    plain = label(rating)
    if plain is None or held is None or plain == held or not margin:
        return plain
    value = float(rating)  # type: ignore[arg-type]
    up = RANK[plain] > RANK[held]
    candidate = label(max(-1.0, value - margin) if up else min(1.0, value + margin))
    if candidate is None:
        return held
    moved = RANK[candidate] - RANK[held]
    return candidate if (moved > 0) == up and moved != 0 else held


def step_label(condition: LabelChange, track: Track, value: Any) -> tuple[str, str] | None:
    """Advance a label condition by ``value``; the move it fires on, if any."""
    if condition.margin:
        now = held_label(track.memory, value, condition.margin)
    else:
        now = value if value in RANK else None
    if now is None:
        return None
    before = track.memory
    track.memory = now
    if before != now and condition.margin and not track.at_close:
        # The quiet range of the label held: its band widened by the margin (less a hair,
        # for rounding), where the label held stays (or the rating is out of range).
        low, high = BANDS[now]
        track.lo, track.hi = low - condition.margin + 1e-9, high + condition.margin - 1e-9
    if before is None or before == now:
        return None
    return (before, now) if condition.matches(before, now) else None


#: Each label's band of ratings (its edges, whichever side holds them).
BANDS: Final = {"STRONG_SELL": (-1.0, -0.5), "SELL": (-0.5, -0.1), "NEUTRAL": (-0.1, 0.1),
                "BUY": (0.1, 0.5), "STRONG_BUY": (0.5, 1.0)}


def step_crossing(condition: Crossing, track: Track, value: Any) -> tuple[str, str] | None:
    """Advance a crossing by ``value``: fire when armed and past the level, re-arm only once
    back past it by the margin."""
    x = value if type(value) is float and value - value == 0.0 else number(value)
    if x is None:
        return None
    level = condition.level
    below = condition.direction == "below"
    beyond = x < level if below else x > level
    armed = track.memory
    if armed is None:
        track.memory = not beyond
        _quiet(condition, track)
        return None
    if armed:
        if beyond:
            track.memory = False
            _quiet(condition, track)
            return f"{'above' if below else 'below'} {level:g}", condition.name
        return None
    if (x >= level + condition.margin) if below else (x <= level - condition.margin):
        track.memory = True
        _quiet(condition, track)
    return None


def _quiet(condition: Crossing, track: Track) -> None:
    """Set the crossing's quiet range (:attr:`Track.lo`, :attr:`Track.hi`) for its state."""
    if track.at_close:
        return
    level = condition.level
    if condition.direction == "below":  # fires below the level; re-arms at level + margin
        if track.memory:
            track.lo, track.hi = math.nextafter(level, -math.inf), math.inf
        else:
            track.lo, track.hi = -math.inf, level + condition.margin
    elif track.memory:  # above: fires above the level; re-arms at level - margin
        track.lo, track.hi = -math.inf, math.nextafter(level, math.inf)
    else:
        track.lo, track.hi = level - condition.margin, math.inf


#: The ``after`` of the trigger that says a rule fired too often and is paused.
PAUSED = "paused"
#: Milliseconds of data time the latest values of a key no rule watches are kept: long enough
#: for a rule made on a board's card to start from the card's value, short enough that keys
#: every board has left do not pile up in the collecting node's memory.
UNWATCHED_KEEP = 3_600_000
#: A publication's keys share its time: each timeframe's bar is worked out once (a month's
#: takes a datetime).
_bar_open = lru_cache(maxsize=64)(bar_open)
#: A read output a (snapshot of a) key's data does not hold.
_MISSING: Any = object()
_NO_READS: frozenset[str] = frozenset()
_EMPTY: Mapping[str, Any] = {}


class Evaluator:
    """The rules of every user, indexed by key, and their tracks.

    ``storm``: a rule firing more than ``count`` times within ``window`` seconds (data time)
    is paused: instead of its next firing comes one trigger ``firing -> paused`` (so its user
    is told through the same channels), and the storage mutes the rule. TradingView stops a
    script alert at 15 in 3 minutes; that is the default."""

    def __init__(self, storm: tuple[int, float] = (15, 180.0),
                 keep: int = UNWATCHED_KEEP) -> None:
        self._by_key: dict[Key, list[Track]] = {}
        #: Per key, its tracks by the output they read (what a change of one output moves),
        #: and the set of those outputs: both rebuilt only when the key's rules change.
        self._index: dict[Key, dict[str, Group]] = {}
        self._reads: dict[Key, frozenset[str]] = {}
        #: Keys whose tracks may not all hold the key's previous values (a rule just added, a
        #: restart, a value missing from what was seen): their next publication is evaluated
        #: in full, whatever its ``changes`` say (:meth:`evaluate`).
        self.unsynced: set[Key] = set()
        #: The latest read values of watched keys as changes update them (the data of their
        #: ``latest`` entry, owned here: a partial publication is merged into it).
        self._own: dict[Key, dict[str, Any]] = {}
        self._seq = 0
        self._rules: dict[int, Rule] = {}
        self.storm = storm
        #: "Only once" rules that fired, and rules paused: silent until replaced.
        self.spent: set[int] = set()
        self.paused: set[int] = set()
        self._fired: dict[int, deque[float]] = {}
        #: The last data and time of every key a publication carried: a rule added later
        #: starts from it, so a change right after the rule is made is a change it saw.
        self.latest: dict[Key, tuple[Mapping[str, Any], int]] = {}
        #: Data-time milliseconds the latest values of an unwatched key are kept (:meth:`prune`).
        self.keep = keep

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._rules

    @property
    def keys(self) -> set[Key]:
        return set(self._by_key)

    def reads_of(self, key: Key) -> frozenset[str]:
        """The outputs of ``key`` its rules read (cached; empty for a key without rules)."""
        return self._reads.get(key, _NO_READS)

    def _reindex(self, key: Key) -> None:
        tracks = self._by_key.get(key)
        if not tracks:
            self._index.pop(key, None)
            self._reads.pop(key, None)
            return
        groups: dict[str, Group] = {}
        for track in tracks:
            group = groups.get(track.reads)
            if group is None:
                group = groups[track.reads] = Group()
            group.tracks.append(track)
        for group in groups.values():
            group.settle()
        self._index[key] = groups
        self._reads[key] = frozenset(groups)

    def restart(self, latest: Mapping[Key, tuple[Mapping[str, Any], int]]) -> None:
        """Start every rule again from ``latest`` (a new leader: what the last one saw)."""
        self.latest.update(latest)
        for key in latest:
            self._own.pop(key, None)
        rules = list(self._rules.values())
        self._by_key.clear()
        self._index.clear()
        self._reads.clear()
        self._rules.clear()
        self.spent.clear()
        self.paused.clear()
        self._fired.clear()
        for rule in rules:
            self.add(rule)

    def rule(self, rule_id: int) -> Rule | None:
        return self._rules.get(rule_id)

    def add(self, rule: Rule) -> None:
        """Watch ``rule`` (replacing a rule of the same id: its tracks start again)."""
        self.remove(rule.id)
        self._rules[rule.id] = rule
        for key in rule.keys:
            self._seq += 1
            track = Track(rule, key, self._seq)
            self._by_key.setdefault(key, []).append(track)
            groups = self._index.get(key)
            if groups is None:
                groups = self._index[key] = {}
            group = groups.get(track.reads)
            if group is None:
                group = groups[track.reads] = Group()
                self._reads[key] = frozenset(groups)
            group.tracks.append(track)
            group.last = None  # the new track's last value may be another
            # It starts from the latest values, which need not be the key's previous ones
            # (a publication's changes are taken from): its next one is seen in full.
            self.unsynced.add(key)
            seen = self.latest.get(key)
            if seen is not None:  # a first sight: it fires nothing
                self._see(track, seen[0], seen[1])
            group.settle()

    def remove(self, rule_id: int) -> None:
        rule = self._rules.pop(rule_id, None)
        self.spent.discard(rule_id)
        self.paused.discard(rule_id)
        self._fired.pop(rule_id, None)
        if rule is None:
            return
        for key in rule.keys:
            tracks = [t for t in self._by_key.get(key, ()) if t.rule.id != rule_id]
            if tracks:
                self._by_key[key] = tracks
            else:
                self._by_key.pop(key, None)
                self.unsynced.discard(key)
                self._own.pop(key, None)  # its latest data stays, as a value no longer updated
            self._reindex(key)

    def replace_all(self, rules: Iterable[Rule]) -> None:
        """Watch exactly ``rules``: new ones added, changed versions re-armed, gone ones
        dropped; an unchanged rule keeps its tracks (so a reload does not re-arm it)."""
        wanted = {rule.id: rule for rule in rules}
        for rule_id in [i for i in self._rules if i not in wanted]:
            self.remove(rule_id)
        for rule in wanted.values():
            if self._rules.get(rule.id) != rule:
                self.add(rule)
        self.prune()

    def prune(self) -> int:
        """Forget the latest values of keys no rule watches once they are older (data time)
        than ``keep`` behind the newest value seen; how many went. A deleted or edited rule's
        tracks, storm window and spent or paused mark go with it (:meth:`remove`), so this is
        the last memory that would otherwise only grow: every key any board ever watched.
        The recorder calls it at every look for changed rules."""
        latest = self.latest
        if not latest:
            return 0
        newest = max(ts for _, ts in latest.values())
        watched = self._by_key
        stale = [key for key, (_, ts) in latest.items()
                 if key not in watched and newest - ts > self.keep]
        for key in stale:
            del latest[key]
            self._own.pop(key, None)
        return len(stale)

    def evaluate(self, values: Iterable[tuple[Key, Mapping[str, Any], int]],
                 changes: Mapping[Key, Mapping[str, Any]] | None = None) -> list[Trigger]:
        """The triggers one publication's ``values`` (key, data, ts) cause.

        ``changes`` (the collector knows them: ``Batch.changes``), key -> the outputs that
        changed since the key's previous publication, with their new values (more is harmless:
        an unchanged value is compared and skipped): only the tracks reading those outputs are
        looked at, the rest hold the key's previous values already, where the full evaluation
        would skip them too. A key it does not name, and a key whose tracks may not hold its
        previous values (:attr:`unsynced`), is evaluated in full from its ``data``; ``None``:
        every key in full. Either way the same triggers, in the same order.

        A key's ``data`` may be its changes themselves (the recorder's copy of what changed,
        ``data is changes[key]``): its latest values are then those it had, updated by them.
        Evaluated in full, an output ``data`` lacks is not seen (the track is left as it is,
        the key stays :attr:`unsynced`); a profile's data has every output."""
        fired: list[Trigger] = []
        seqs: list[int] = []  # each trigger's track's seq, to put a key's triggers in order
        index = self._index
        latest = self.latest
        unsynced = self.unsynced
        own = self._own
        at_close, limited = self._at_close, self._limited
        spent, paused, storms = self.spent, self.paused, self._fired
        count, window = self.storm
        new = tuple.__new__  # Trigger(...) without its Python-level __new__
        for key, data, ts in values:
            groups = index.get(key)
            if groups is None:
                latest[key] = (data, ts)
                continue
            changed = None if changes is None else changes.get(key)
            mine: dict[str, Any] | None = None
            if changed is None or key in unsynced:  # in full: every output its rules read
                get = data.get
                changed = {name: value for name in groups
                           if (value := get(name, _MISSING)) is not _MISSING}
                if len(changed) == len(groups):
                    unsynced.discard(key)
                    latest[key] = (data, ts)
                    if own:
                        own.pop(key, None)
                else:  # not seen (a snapshot made before its rule): keep its latest values
                    unsynced.add(key)
                    earlier = latest.get(key)
                    before = (earlier[0] if earlier is not None else _EMPTY).get
                    merged = own[key] = {name: get(name, before(name)) for name in groups}
                    latest[key] = (merged, ts)
            elif data is changed:  # only what changed (the recorder's copy): merged into ours
                mine = own.get(key)
                if mine is None:  # the data seen last, made ours to update by changes
                    prior = latest.get(key)
                    held = prior[0] if prior is not None else _EMPTY
                    mine = own[key] = only(held, groups.keys())
                latest[key] = (mine, ts)
            else:  # the key's whole data: the latest values
                latest[key] = (data, ts)
                if own:
                    own.pop(key, None)
            start, first, mixed = len(fired), None, False
            key_bar = None  # the key's bar at ``ts``, worked out at its first move
            t = ts / 1000  # the data's time in seconds, as cool-downs and storms count it
            since = t - window
            for name, value in changed.items():
                group = groups.get(name)
                if group is None:
                    continue
                if mine is not None:
                    mine[name] = value
                last = group.last
                if value == last and last is not None:
                    continue
                group.last = value
                numeric = type(value) is float
                if numeric and group.lo < value < group.hi:
                    # Every track quiet: none steps, and none needs ``last`` (a step is the
                    # same whether or not the value came before).
                    continue
                stepped = False
                named = value if isinstance(value, str) and value in RANK else None
                for track in group.tracks:
                    last = track.last
                    if value == last and last is not None:
                        continue
                    track.last = value
                    if numeric and track.lo < value < track.hi:
                        continue  # a crossing's quiet range: the step would move nothing
                    stepped = True
                    if track.at_close:
                        closed = at_close(track, value, ts)
                        if closed is None:
                            continue
                        (moved_from, moved_to), seen, bar = closed
                    else:
                        if track.plain:  # step_label without a margin, inlined
                            if named is None:
                                continue
                            moved_from = track.memory
                            track.memory = moved_to = named
                            if moved_from is None or moved_from == named:
                                continue
                            if not track.condition.matches(moved_from, named):
                                continue
                        else:
                            moved = track.step(track.condition, track, value)
                            if moved is None:
                                continue
                            moved_from, moved_to = moved
                        if key_bar is None:
                            key_bar = _bar_open(key.tf, ts)
                        seen, bar = value, key_bar
                    # The gate (does the move fire?), inlined: it runs for every move.
                    rule = track.rule
                    rule_id = rule.id
                    if rule_id in spent or rule_id in paused:
                        continue
                    if track.limited and limited(track, t):
                        continue
                    if track.per_bar and track.fired_bar == bar:
                        continue
                    times = storms.get(rule_id)
                    if times is None:
                        times = storms[rule_id] = deque()
                    while times and times[0] <= since:
                        times.popleft()
                    if len(times) >= count:  # too many: paused, and its user told so
                        paused.add(rule_id)
                        trigger = new(Trigger, (rule, key, "firing", PAUSED, bar, ts, None))
                    else:
                        times.append(t)
                        track.fired_at, track.fired_bar = t, bar
                        if track.once:
                            spent.add(rule_id)
                        trigger = new(Trigger, (rule, key, moved_from, moved_to, bar, ts, seen))
                    fired.append(trigger)
                    seqs.append(track.seq)
                    if first is None:
                        first = name
                    elif name != first:
                        mixed = True
                if stepped and group.quiets:
                    group.settle()
            if mixed:  # in the tracks' order, as they were made
                order = sorted(range(start, len(fired)), key=seqs.__getitem__)
                fired[start:] = [fired[i] for i in order]
                seqs[start:] = [seqs[i] for i in order]
        return fired

    def _see(self, track: Track, data: Mapping[str, Any], ts: int) -> None:
        """A new track's first sight of its key: it moves nothing (there is no change it
        watched happen), so no gate."""
        value = track.last = data.get(track.reads)
        if track.at_close:
            self._at_close(track, value, ts)
        else:
            track.step(track.condition, track, value)

    def _at_close(self, track: Track, value: Any,
                  ts: int) -> tuple[tuple[str, str], Any, int] | None:
        """Once per bar close: the condition sees only the last value of each bar, when the
        first value of a later bar shows that bar has closed. The move, with the value and the
        bar that closed, if it moved."""
        now_bar = _bar_open(track.key.tf, ts)
        if track.bar is None or now_bar == track.bar:
            track.bar, track.pending = now_bar, value
            return None
        close, bar = track.pending, track.bar  # the bar that ended, and its last value
        track.bar, track.pending = now_bar, value
        moved = track.step(track.condition, track, close)
        return None if moved is None else (moved, close, bar)

    @staticmethod
    def _limited(track: Track, t: float) -> bool:
        """Whether the rule's mute, expiry or cool-down (on this key) silences a move at
        ``t`` (Unix seconds, data time)."""
        rule = track.rule
        if rule.muted or (rule.expires_at is not None and t >= rule.expires_at):
            return True
        return bool(rule.cooldown and track.fired_at is not None
                    and t - track.fired_at < rule.cooldown)
