"""The evaluation that follows what changed (``Batch.changes``) makes exactly the triggers the
straightforward one makes: random sequences of values (a profile's data updated in place, as
``full`` does), of rules made and deleted, of new terms and of publications queued behind a slow
write, fed to three evaluators side by side:

- the straightforward one: every key of a publication in full, from a copy of its data;
- the evaluator given each publication's changes (the items that differ from the key's
  previous data, as the collector computes them; none for a key's first data);
- the recorder's path: its snapshot taken when the batch is published (only the changed
  outputs rules read), evaluated when the writer gets to it, with the values it records,
  against the recorder's straightforward path (every output its rules read copied when the
  batch is published, every key evaluated in full: a rule made later on a key of rules, on
  another output, starts from no value there, as it always did).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quartsig.alerts.evaluation import Evaluator, Trigger
from quartsig.alerts.recorder import Recorder
from quartsig.alerts.rules import FREQUENCIES, Crossing, LabelChange, Rule, watchlist
from quartsig.domain.model import Batch, Key
from quartsig.domain.rules import label

KEYS = (Key("full", "FX_IDC:EURUSD", "1h"), Key("full", "FX_IDC:USDJPY", "15m"),
        Key("full", "FX_IDC:GBPUSD", "1h"))
HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
RATINGS = (None, -0.8, -0.52, -0.45, -0.3, -0.12, -0.05, 0.05, 0.08, 0.12, 0.3, 0.52, 0.8)
RSIS = (None, 20.0, 29.0, 31.0, 33.0, 50.0, 68.0, 71.0, 73.0, 85.0)
STEPS = (1_000, 60_000, 900_000, 1_800_000, HOUR, 4 * HOUR)
STORM = (4, 600.0)

conditions = st.one_of(
    st.builds(LabelChange,
              to=st.frozensets(st.sampled_from(("SELL", "NEUTRAL", "BUY", "STRONG_BUY")),
                               max_size=2),
              from_=st.frozensets(st.sampled_from(("SELL", "NEUTRAL", "BUY")), max_size=1),
              margin=st.sampled_from((0.0, 0.0, 0.05))),
    st.builds(Crossing, output=st.sampled_from(("RSI", "Recommend.All")),
              direction=st.sampled_from(("above", "below")),
              level=st.sampled_from((30.0, 70.0, 0.1, -0.1)),
              margin=st.sampled_from((0.0, 2.0, 0.05))),
)


@st.composite
def rules(draw: st.DrawFn, rule_id: int) -> Rule:
    options = {"frequency": draw(st.sampled_from(FREQUENCIES)),
               "cooldown": draw(st.sampled_from((0.0, 0.0, 120.0))),
               "version": draw(st.integers(1, 3))}
    if draw(st.booleans()) and draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
        return watchlist(rule_id, 7, keys, **options)
    return Rule(rule_id, 7, (draw(st.sampled_from(KEYS)),), draw(conditions), **options)


#: One publication: per key it carries, which outputs move to what (an unrelated output too,
#: so a key can change without any output its rules read changing).
moves = st.dictionaries(
    st.sampled_from(KEYS),
    st.fixed_dictionaries({}, optional={"rating": st.sampled_from(RATINGS),
                                        "RSI": st.sampled_from(RSIS),
                                        "other": st.integers(0, 3)}),
    min_size=1, max_size=3)

operations = st.lists(st.one_of(
    st.tuples(st.just("publish"), moves, st.sampled_from(STEPS)),
    st.tuples(st.just("publish"), moves, st.sampled_from(STEPS)),
    st.tuples(st.just("publish"), moves, st.sampled_from(STEPS)),
    st.tuples(st.just("add"), st.integers(1, 6)),
    st.tuples(st.just("remove"), st.integers(1, 6)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("term")),
), max_size=40)


def _data(rating: Any, rsi: Any, other: int) -> dict[str, Any]:
    return {"Recommend.All": rating, "rec.all": label(rating), "RSI": rsi, "other": other}


def _seen(triggers: list[Trigger]) -> list[tuple[Any, ...]]:
    return [(t.rule.id, t.rule.version, t.key, t.before, t.after, t.bar, t.ts, t.value)
            for t in triggers]


def _state(evaluator: Evaluator) -> Any:
    tracks = {(t.rule.id, t.key): (t.memory, t.fired_at, t.fired_bar, t.pending)
              for ts in evaluator._by_key.values() for t in ts}
    return tracks, evaluator.spent, evaluator.paused


class Collector:
    """A profile's data per key, updated in place, and its changes, as the collector has."""

    def __init__(self) -> None:
        self.outputs: dict[Key, dict[str, Any]] = {}
        self.state: dict[Key, dict[str, Any]] = {}

    def publish(self, move: dict[Key, dict[str, Any]], ts: int) -> Batch:
        batch = Batch()
        for key, change in move.items():
            state = self.state.setdefault(key, {"rating": 0.0, "RSI": 50.0, "other": 0})
            state.update(change)
            new = _data(state["rating"], state["RSI"], state["other"])
            previous = self.outputs.get(key)
            if previous is None:
                data = self.outputs[key] = new
            else:
                delta = {name: value for name, value in new.items() if previous[name] != value}
                data = previous  # the same dict, updated in place (as ``full``)
                batch.changes[key] = (previous, delta)
                data.update(delta)
            batch.values.append((key, data, ts))
        return batch


@settings(max_examples=300, deadline=None)
@given(st.data(), operations)
def test_the_changes_path_fires_as_the_full_evaluation(data: st.DataObject,
                                                        ops: list[Any]) -> None:
    full, fast, plain = Evaluator(storm=STORM), Evaluator(storm=STORM), Evaluator(storm=STORM)
    plain_queue: list[tuple[list[Any], int]] = []
    plain_term = 1
    recorder = Recorder(storm=STORM)
    recorded = recorder.evaluator
    recorder.term = term = 1
    collector = Collector()
    queued: list[list[tuple[Any, ...]]] = []  # the full path's triggers of queued batches
    made: list[tuple[Any, ...]] = []
    expected_seen: dict[Key, tuple[dict[str, Any], int]] = {}
    alert_seen: dict[Key, tuple[dict[str, Any], int]] = {}  # what the recorder wrote
    now = T0

    def flush() -> None:
        nonlocal plain_term
        seen: dict[Key, tuple[dict[str, Any], int]] = {}
        for values, its_term in plain_queue:
            if its_term != plain_term:
                plain.restart(alert_seen)
                plain_term = its_term
            queued.append(_seen(plain.evaluate(values)))
            for key, copied, ts in values:
                if plain.reads_of(key):
                    expected_seen[key] = ({n: copied.get(n) for n in plain.reads_of(key)}, ts)
        plain_queue.clear()
        while recorder.queue:
            publication, its_term = recorder.queue.popleft()
            if its_term != recorder.term:  # the writer's _sync, from what was recorded
                recorded.restart(alert_seen)
                recorder.term = its_term
            made.extend(_seen(recorder._evaluate(publication, seen)))
        assert made == [t for batch in queued for t in batch]
        assert seen == expected_seen
        alert_seen.update(seen)
        queued.clear()
        made.clear()
        expected_seen.clear()

    for op in ops:
        if op[0] == "publish":
            now += op[2]
            batch = collector.publish(op[1], now)
            copies = [(key, dict(values), ts) for key, values, ts in batch.values]
            changes = {key: delta for key, (_, delta) in batch.changes.items()}
            expected = _seen(full.evaluate(copies))
            assert _seen(fast.evaluate(batch.values, changes)) == expected
            recorder.on_published(batch, term)
            plain_queue.append(([(key, {n: values.get(n) for n in reads} if (
                reads := plain.reads_of(key)) else values, ts)  # (the live dict, as ever)
                for key, values, ts in batch.values], term))
        elif op[0] == "flush":
            flush()
        elif op[0] == "term":  # a new leader: every evaluator restarts from what was written
            flush()
            term += 1
            for evaluator in (full, fast):
                evaluator.restart(alert_seen)
        else:  # rules change while nothing is queued (else their first values differ)
            flush()
            if op[0] == "add":
                rule = data.draw(rules(op[1]))
                for evaluator in (full, fast, plain, recorded):
                    evaluator.add(rule)
            else:
                for evaluator in (full, fast, plain, recorded):
                    evaluator.remove(op[1])
        assert _state(fast) == _state(full)
    flush()
    assert _state(recorded) == _state(plain)
    for key in full.keys & set(full.latest):  # the latest values a new rule starts from
        for name in full.reads_of(key):
            assert fast.latest[key][0].get(name) == full.latest[key][0].get(name)
            assert recorded.latest[key][0].get(name) == plain.latest[key][0].get(name)


def test_a_rule_on_an_output_that_did_not_change_starts_from_its_value() -> None:
    """A rule added between two publications sees the key's next one in full, even if the
    output it reads did not change in it: from then on, changes only."""
    collector, evaluator = Collector(), Evaluator()
    key = KEYS[0]
    evaluator.add(Rule(1, 7, (key,), Crossing("RSI", "below", 30.0)))
    first = collector.publish({key: {"rating": 0.3, "RSI": 50.0}}, T0)
    evaluator.evaluate(first.values, {})
    evaluator.latest.clear()  # nothing to start from: the next value is a first sight
    evaluator.add(Rule(2, 7, (key,), LabelChange()))
    second = collector.publish({key: {"RSI": 40.0}}, T0 + 60_000)  # rec.all did not change
    changes = {k: delta for k, (_, delta) in second.changes.items()}
    assert "rec.all" not in changes[key]
    assert evaluator.evaluate(second.values, changes) == []
    third = collector.publish({key: {"rating": -0.3}}, T0 + 120_000)
    changes = {k: delta for k, (_, delta) in third.changes.items()}
    fired = evaluator.evaluate(third.values, changes)
    assert [(t.rule.id, t.before, t.after) for t in fired] == [(2, "BUY", "SELL")]
    assert key not in evaluator.unsynced


def test_reads_are_cached_per_key_and_follow_rule_changes() -> None:
    evaluator = Evaluator()
    key = KEYS[0]
    evaluator.add(Rule(1, 7, (key,), Crossing("RSI", "below", 30.0)))
    evaluator.add(Rule(2, 7, (key,), LabelChange(margin=0.05)))
    assert evaluator.reads_of(key) == {"RSI", "Recommend.All"}
    assert evaluator.reads_of(key) is evaluator.reads_of(key)
    evaluator.remove(1)
    assert evaluator.reads_of(key) == {"Recommend.All"}
    evaluator.remove(2)
    assert evaluator.reads_of(key) == frozenset() and key not in evaluator.unsynced


def test_one_keys_triggers_come_in_the_order_of_its_rules_on_either_path() -> None:
    key = KEYS[0]
    rules_ = [Rule(1, 7, (key,), Crossing("RSI", "below", 30.0)), Rule(2, 7, (key,), LabelChange())]
    made = []
    for with_changes in (False, True):
        collector, evaluator = Collector(), Evaluator()
        for rule in rules_:
            evaluator.add(rule)
        for move, ts in (({key: {}}, T0), ({key: {}}, T0 + 1_000),
                         ({key: {"rating": -0.3, "RSI": 20.0}}, T0 + 2_000)):
            batch = collector.publish(move, ts)
            changes = {k: delta for k, (_, delta) in batch.changes.items()}
            fired = evaluator.evaluate(batch.values, changes if with_changes else None)
        made.append([t.rule.id for t in fired])
    assert made == [[1, 2], [1, 2]]


def test_a_dropped_publications_change_is_seen_at_the_next(monkeypatch: Any) -> None:
    """A publication dropped from a full queue (the database away for long) takes its changes
    with it: the next one's changes are taken from it, so its keys are evaluated in full."""
    from quartsig.alerts import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "MAX_QUEUED", 1)
    key = KEYS[0]
    recorder, collector = Recorder(), Collector()
    recorder.term = 1
    recorder.evaluator.add(Rule(1, 7, (key,), LabelChange()))
    recorder.on_published(collector.publish({key: {}}, T0), 1)
    assert recorder._evaluate(recorder.queue.popleft()[0], {}) == []
    recorder.on_published(collector.publish({key: {"rating": -0.8}}, T0 + 1_000), 1)
    recorder.on_published(collector.publish({key: {"RSI": 20.0}}, T0 + 2_000), 1)  # drops
    assert len(recorder.queue) == 1
    fired = recorder._evaluate(recorder.queue.popleft()[0], {})
    assert [(t.before, t.after) for t in fired] == [("NEUTRAL", "STRONG_SELL")]


def test_the_values_recorded_are_those_the_rules_read_after_one_goes() -> None:
    """The recorder copies the evaluator's values of a key for ``alert_seen``: after a rule
    is deleted, only what the key's remaining rules read, though the evaluator's own copy of
    the key's values (kept up to date by changes) still holds the deleted rule's output."""
    key = KEYS[0]
    recorder, collector = Recorder(), Collector()
    recorder.term = 1
    recorder.evaluator.add(Rule(1, 7, (key,), Crossing("RSI", "below", 30.0)))
    recorder.evaluator.add(Rule(2, 7, (key,), LabelChange()))
    for move, ts in (({key: {}}, T0), ({key: {"RSI": 40.0}}, T0 + 1_000)):
        recorder.on_published(collector.publish(move, ts), 1)
        recorder._evaluate(recorder.queue.popleft()[0], {})
    recorder.evaluator.remove(2)
    recorder.on_published(collector.publish({key: {"RSI": 35.0}}, T0 + 2_000), 1)
    seen: dict[Key, tuple[dict[str, Any], int]] = {}
    recorder._evaluate(recorder.queue.popleft()[0], seen)
    assert seen == {key: ({"RSI": 35.0}, T0 + 2_000)}
