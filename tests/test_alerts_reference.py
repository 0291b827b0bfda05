"""The evaluator against a plain reference: every track of a key sees every value of it.

The evaluator skips work (a group of tracks whose quiet ranges all hold the value, a track
whose own quiet range holds it, outputs that did not change); the reference below skips
nothing but a value equal to the track's last one, which is the contract. Random rules (every
condition, frequency, cool-down, expiry, mute), random values (floats near the levels and
band edges, ints, None, NaN, strings), rules added, replaced and removed between publications,
restarts and prunes: both evaluator paths (whole data, and only the changes) make the
reference's triggers, in its order, and hold its state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quartsig.alerts.bars import bar_open
from quartsig.alerts.evaluation import PAUSED, UNWATCHED_KEEP, Evaluator, Trigger, held_label
from quartsig.alerts.rules import FREQUENCIES, LABELS, RANK, Crossing, LabelChange, Rule, watchlist
from quartsig.domain.model import Key
from quartsig.domain.rules import number

KEYS = (Key("full", "FX_IDC:EURUSD", "1h"), Key("full", "FX_IDC:USDJPY", "15m"),
        Key("full", "FX_IDC:GBPUSD", "1d"))
HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
STORM = (4, 900.0)
NAN = float("nan")
RATINGS = (-1.0, -0.7, -0.5, -0.47, -0.3, -0.12, -0.1, -0.06, 0.0, 0.05, 0.1, 0.13, 0.3, 0.5,
           0.56, 0.9, 1.0, 1.3, 0, 1, None, NAN, "n/a", True)
RSIS = (10.0, 27.5, 29.99, 30.0, 30.01, 31.0, 32.0, 32.5, 50.0, 67.0, 68.0, 69.99, 70.0, 70.5,
        72.0, 90.0, 30, 70, 50, None, NAN, "n/a")
STEPS = (1_000, 1_000, 60_000, 60_000, 900_000, HOUR, 20 * HOUR)

conditions = st.one_of(
    st.builds(LabelChange,
              to=st.frozensets(st.sampled_from(LABELS), max_size=2),
              from_=st.frozensets(st.sampled_from(LABELS), max_size=2),
              margin=st.sampled_from((0.0, 0.0, 0.03, 0.1))),
    st.builds(LabelChange, output=st.sampled_from(("RSI", "other"))),
    st.builds(Crossing, output=st.sampled_from(("RSI", "RSI", "Recommend.All", "other")),
              direction=st.sampled_from(("above", "below")),
              level=st.sampled_from((30.0, 70.0, 0.1, -0.5, 2.0)),
              margin=st.sampled_from((0.0, 2.0, 0.05))),
)


@st.composite
def rules(draw: st.DrawFn, rule_id: int) -> Rule:
    options = {"frequency": draw(st.sampled_from(FREQUENCIES)),
               "cooldown": draw(st.sampled_from((0.0, 0.0, 120.0, 3_600.0))),
               "expires_at": draw(st.sampled_from((None, None, (T0 + 30 * HOUR) / 1000))),
               "muted": draw(st.sampled_from((False, False, False, True))),
               "version": draw(st.integers(1, 3))}
    if draw(st.integers(0, 4)) == 0:
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
        return watchlist(rule_id, 7, keys, **options)
    return Rule(rule_id, 7, (draw(st.sampled_from(KEYS)),), draw(conditions), **options)


#: One key's data in a publication (a profile's data has every output).
datas = st.fixed_dictionaries(
    {"Recommend.All": st.sampled_from(RATINGS), "RSI": st.sampled_from(RSIS),
     "rec.all": st.sampled_from((*LABELS, None, "junk")),
     "other": st.sampled_from((0, 1, 2.5, None, "SELL"))})

publications = st.tuples(st.just("publish"),
                         st.dictionaries(st.sampled_from(KEYS), datas, min_size=1),
                         st.sampled_from(STEPS))
operations = st.tuples(st.lists(st.integers(1, 8), min_size=1, max_size=8), st.lists(st.one_of(
    publications, publications, publications, publications, publications, publications,
    st.tuples(st.just("add"), st.integers(1, 8)),
    st.tuples(st.just("add"), st.integers(1, 8)),
    st.tuples(st.just("remove"), st.integers(1, 8)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("prune")),
), min_size=10, max_size=80))


@dataclass
class Plain:
    """One (rule, key): what the reference remembers."""

    rule: Rule
    key: Key
    last: Any = None
    memory: Any = None
    fired_at: float | None = None
    fired_bar: int | None = None
    bar: int | None = None
    pending: Any = None


def _move(track: Plain, value: Any) -> tuple[str, str] | None:
    """The condition's step, written out plainly."""
    condition = track.rule.condition
    if isinstance(condition, LabelChange):
        if condition.margin:
            now = held_label(track.memory, value, condition.margin)
        else:
            now = value if value in RANK else None
        if now is None:
            return None
        before, track.memory = track.memory, now
        if before is None or before == now:
            return None
        if condition.to and now not in condition.to:
            return None
        if condition.from_ and before not in condition.from_:
            return None
        return before, now
    x = number(value)
    if x is None:
        return None
    below = condition.direction == "below"
    beyond = x < condition.level if below else x > condition.level
    if track.memory is None:
        track.memory = not beyond
    elif track.memory and beyond:
        track.memory = False
        return f"{'above' if below else 'below'} {condition.level:g}", condition.name
    elif not track.memory and (x >= condition.level + condition.margin if below
                               else x <= condition.level - condition.margin):
        track.memory = True
    return None


@dataclass
class Reference:
    tracks: list[Plain] = field(default_factory=list)
    rules: dict[int, Rule] = field(default_factory=dict)
    latest: dict[Key, tuple[dict[str, Any], int]] = field(default_factory=dict)
    spent: set[int] = field(default_factory=set)
    paused: set[int] = field(default_factory=set)
    fired: dict[int, deque[float]] = field(default_factory=dict)

    def add(self, rule: Rule) -> None:
        self.remove(rule.id)
        self.rules[rule.id] = rule
        for key in rule.keys:
            track = Plain(rule, key)
            self.tracks.append(track)
            if key in self.latest:
                data, ts = self.latest[key]
                self._see(track, data.get(rule.condition.reads), ts)

    def remove(self, rule_id: int) -> None:
        self.rules.pop(rule_id, None)
        self.tracks = [t for t in self.tracks if t.rule.id != rule_id]
        self.spent.discard(rule_id)
        self.paused.discard(rule_id)
        self.fired.pop(rule_id, None)

    def restart(self, latest: dict[Key, tuple[dict[str, Any], int]]) -> None:
        self.latest.update(latest)
        rules = list(self.rules.values())
        self.tracks, self.rules = [], {}
        self.spent.clear()
        self.paused.clear()
        self.fired.clear()
        for rule in rules:
            self.add(rule)

    def prune(self) -> None:
        if self.latest:
            newest = max(ts for _, ts in self.latest.values())
            watched = {t.key for t in self.tracks}
            for key in [k for k, (_, ts) in self.latest.items()
                        if k not in watched and newest - ts > UNWATCHED_KEEP]:
                del self.latest[key]

    def evaluate(self, values: list[tuple[Key, dict[str, Any], int]]) -> list[Trigger]:
        out: list[Trigger] = []
        for key, data, ts in values:
            self.latest[key] = (data, ts)
            for track in self.tracks:
                if track.key == key:
                    trigger = self._see(track, data[track.rule.condition.reads], ts)
                    if trigger is not None:
                        out.append(trigger)
        return out

    def _see(self, track: Plain, value: Any, ts: int) -> Trigger | None:
        if value == track.last and track.last is not None:
            return None
        track.last = value
        bar = bar_open(track.key.tf, ts)
        if track.rule.frequency == "once_per_bar_close":
            if track.bar is None or track.bar == bar:
                track.bar, track.pending = bar, value
                return None
            value, bar, track.bar, track.pending = track.pending, track.bar, bar, value
        moved = _move(track, value)
        if moved is None:
            return None
        rule, t = track.rule, ts / 1000
        if rule.muted or rule.id in self.spent or rule.id in self.paused:
            return None
        if rule.expires_at is not None and t >= rule.expires_at:
            return None
        if rule.cooldown and track.fired_at is not None and t - track.fired_at < rule.cooldown:
            return None
        if rule.frequency == "once_per_bar" and track.fired_bar == bar:
            return None
        times = self.fired.setdefault(rule.id, deque())
        while times and times[0] <= t - STORM[1]:
            times.popleft()
        if len(times) >= STORM[0]:
            self.paused.add(rule.id)
            return Trigger(rule, track.key, "firing", PAUSED, bar, ts, None)
        times.append(t)
        track.fired_at, track.fired_bar = t, bar
        if rule.frequency == "only_once":
            self.spent.add(rule.id)
        return Trigger(rule, track.key, moved[0], moved[1], bar, ts, value)


def _made(triggers: list[Trigger]) -> list[tuple[Any, ...]]:
    return [(t.rule.id, t.rule.version, t.key, t.before, t.after, t.bar, t.ts, t.value)
            for t in triggers]


def _held(tracks: Any, spent: set[int], paused: set[int]) -> Any:
    """What a track holds. The bar of a pending None is left out: the changes path does not
    see a None repeated (it is no change) where the whole path closes its bar, and closing a
    bar on None moves nothing either way."""
    return sorted(((t.rule.id, t.key, t.memory, t.fired_at, t.fired_bar,
                    None if t.pending is None else t.bar, t.pending) for t in tracks),
                  key=repr), spent, paused


def _evaluator_held(evaluator: Evaluator) -> Any:
    return _held([t for ts in evaluator._by_key.values() for t in ts], evaluator.spent,
                 evaluator.paused)


def _plain_held(reference: Reference) -> Any:
    return _held(reference.tracks, reference.spent, reference.paused)


@settings(max_examples=400, deadline=None)
@given(st.data(), operations)
def test_the_evaluator_fires_as_the_plain_reference(data: st.DataObject,
                                                     script: tuple[list[int], list[Any]]) -> None:
    whole, changes, reference = Evaluator(STORM), Evaluator(STORM), Reference()
    previous: dict[Key, dict[str, Any]] = {}
    now = T0
    first, ops = script
    for op in [("add", rule_id) for rule_id in first] + ops:
        if op[0] == "publish":
            now += op[2]
            values = [(key, dict(outputs), now) for key, outputs in op[1].items()]
            expected = _made(reference.evaluate(values))
            assert _made(whole.evaluate([(k, dict(d), ts) for k, d, ts in values])) == expected
            deltas: dict[Key, dict[str, Any]] = {}
            for key, outputs, _ in values:  # what changed since the key's previous data
                before = previous.get(key)
                if before is not None:
                    deltas[key] = {n: v for n, v in outputs.items() if v != before[n]}
                previous[key] = outputs
            batch = [(k, dict(d), ts) for k, d, ts in values]
            assert _made(changes.evaluate(batch, deltas)) == expected
        elif op[0] == "add":
            rule = data.draw(rules(op[1]))
            for evaluator in (whole, changes, reference):
                evaluator.add(rule)
        elif op[0] == "remove":
            for evaluator in (whole, changes, reference):
                evaluator.remove(op[1])
        elif op[0] == "restart":  # a new leader, from what the reference last saw
            latest = {key: (dict(seen), ts) for key, (seen, ts) in reference.latest.items()}
            for evaluator in (whole, changes, reference):
                evaluator.restart(latest)
        else:
            for evaluator in (whole, changes, reference):
                evaluator.prune()
        assert _evaluator_held(whole) == _plain_held(reference)
        assert _evaluator_held(changes) == _plain_held(reference)
