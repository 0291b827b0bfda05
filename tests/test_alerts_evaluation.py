"""The evaluator: the right triggers, once, for changed keys only; time is the data's."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import pairwise
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from quartsig.alerts.bars import bar_open
from quartsig.alerts.evaluation import Evaluator, Trigger, held_label
from quartsig.alerts.rules import LABELS, RANK, Crossing, LabelChange, Rule, watchlist
from quartsig.domain.model import Key
from quartsig.domain.rules import label

KEY = Key("summary", "FX_IDC:EURUSD", "1h")
HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR  # a bar open, Unix ms


def _rule(condition: Any = None, **options: Any) -> Rule:
    return Rule(options.pop("id", 1), 42, options.pop("keys", (KEY,)),
                condition or LabelChange(), **options)


def _feed(evaluator: Evaluator, field: str, values: list[Any], *, key: Key = KEY,
          start: int = T0, step: int = 60_000) -> list[Trigger]:
    fired: list[Trigger] = []
    for i, value in enumerate(values):
        fired += evaluator.evaluate([(key, {field: value}, start + i * step)])
    return fired


def _moves(fired: list[Trigger]) -> list[tuple[str, str]]:
    return [(t.before, t.after) for t in fired]


def test_a_label_goes_to_strong_buy() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(LabelChange(to=frozenset({"STRONG_BUY"}))))
    fired = _feed(evaluator, "rec.all",
                  ["STRONG_BUY", "NEUTRAL", "BUY", "STRONG_BUY", "STRONG_BUY", "BUY"])
    # the first value is only seen (no change watched), STRONG_BUY -> STRONG_BUY is no change
    assert _moves(fired) == [("BUY", "STRONG_BUY")]
    assert fired[0].key == KEY and fired[0].value == "STRONG_BUY" and fired[0].bar == T0


def test_any_change_and_from_any_to_a_set() -> None:
    anything, selling = Evaluator(), Evaluator()
    anything.add(_rule())
    selling.add(_rule(LabelChange(to=frozenset({"SELL", "STRONG_SELL"}))))
    labels = ["NEUTRAL", "SELL", "STRONG_SELL", "BUY", None, "STRONG_SELL"]
    assert _moves(_feed(anything, "rec.all", labels)) == [
        ("NEUTRAL", "SELL"), ("SELL", "STRONG_SELL"), ("STRONG_SELL", "BUY"),
        ("BUY", "STRONG_SELL")]
    assert _moves(_feed(selling, "rec.all", labels)) == [
        ("NEUTRAL", "SELL"), ("SELL", "STRONG_SELL"), ("BUY", "STRONG_SELL")]


def test_from_a_set() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(LabelChange(from_=frozenset({"NEUTRAL"}), to=frozenset({"BUY"}))))
    fired = _feed(evaluator, "rec.all", ["SELL", "BUY", "NEUTRAL", "BUY"])
    assert _moves(fired) == [("NEUTRAL", "BUY")]


def test_rsi_crossing_below_30_with_hysteresis_fires_once_per_swing() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(Crossing("RSI", "below", 30, margin=2)))
    fired = _feed(evaluator, "RSI", [35, 29.9, 30.1, 29.8, 31.9, 29.5, 32.0, 29.0])
    # 29.9 fires; the wobble to 30.1/31.9 is inside the margin; 32.0 re-arms; 29.0 fires
    assert [t.value for t in fired] == [29.9, 29.0]
    assert fired[0].transition == "above 30>below 30"


def test_crossing_above_without_margin_and_nulls_ignored() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(Crossing("RSI", "above", 70)))
    assert [t.value for t in _feed(evaluator, "RSI", [71, 60, None, 70, 70.5, "x", 69, 80])] \
        == [70.5, 80]


def test_a_first_value_already_past_the_level_does_not_fire() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(Crossing("RSI", "below", 30)))
    assert _feed(evaluator, "RSI", [20, 25, 31, 29]) != [] and \
        [t.value for t in _feed(Evaluator(), "RSI", [20])] == []


def test_label_hysteresis_quiets_a_rating_wobbling_on_a_boundary() -> None:
    wobble = [0.05, 0.11, 0.09, 0.12, 0.08, 0.14, 0.2, 0.06, 0.04]
    plain, held = Evaluator(), Evaluator()
    plain.add(_rule(LabelChange(margin=0.0, output="rec.all")))
    held.add(_rule(LabelChange(margin=0.05)))
    assert len(_feed(plain, "rec.all", [label(v) for v in wobble])) == 6
    # with the margin: BUY only at 0.2 (0.1 + 0.05 passed), NEUTRAL again only at 0.04
    assert [(t.before, t.after, t.value) for t in _feed(held, "Recommend.All", wobble)] == [
        ("NEUTRAL", "BUY", 0.2), ("BUY", "NEUTRAL", 0.04)]


def test_once_per_bar_fires_once_in_each_bar() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(frequency="once_per_bar"))
    labels = ["NEUTRAL", "BUY", "NEUTRAL", "BUY", "SELL", "BUY"]  # minutes 0..5 of one bar
    assert len(_feed(evaluator, "rec.all", labels)) == 1
    fired = _feed(evaluator, "rec.all", ["NEUTRAL", "BUY"], start=T0 + HOUR)
    assert [t.bar for t in fired] == [T0 + HOUR]


def test_once_per_bar_close_sees_only_closes() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(LabelChange(to=frozenset({"BUY"})), frequency="once_per_bar_close"))
    # bar 0 closes NEUTRAL; bar 1 visits BUY but closes NEUTRAL: nothing
    assert _feed(evaluator, "rec.all", ["SELL", "NEUTRAL"]) == []
    assert _feed(evaluator, "rec.all", ["BUY", "NEUTRAL"], start=T0 + HOUR) == []
    # bar 2 closes BUY: fires when bar 3's first value shows bar 2 has closed
    assert _feed(evaluator, "rec.all", ["SELL", "BUY"], start=T0 + 2 * HOUR) == []
    fired = _feed(evaluator, "rec.all", ["SELL"], start=T0 + 3 * HOUR)
    assert [(t.before, t.after, t.bar) for t in fired] == [("NEUTRAL", "BUY", T0 + 2 * HOUR)]


def test_only_once_fires_once_across_every_key() -> None:
    other = Key("summary", "FX_IDC:GBPUSD", "1h")
    evaluator = Evaluator()
    evaluator.add(watchlist(1, 42, [KEY, other], frequency="only_once"))
    fired = _feed(evaluator, "rec.all", ["NEUTRAL", "BUY", "SELL"])
    fired += _feed(evaluator, "rec.all", ["NEUTRAL", "BUY"], key=other)
    assert _moves(fired) == [("NEUTRAL", "BUY")]
    assert evaluator.spent == {1}


def test_cooldown_counts_data_time_per_key() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(cooldown=300))
    fired = _feed(evaluator, "rec.all", ["NEUTRAL", "BUY", "NEUTRAL", "BUY", "SELL", "BUY",
                                         "NEUTRAL"], step=100_000)
    # fires at 100 s; the moves at 200 s and 300 s are cooling; 400 s (100 s + 300 s) fires;
    # 500 s and 600 s are cooling again
    assert [t.ts - T0 for t in fired] == [100_000, 400_000]


def test_expiry_stops_firing() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(expires_at=(T0 + 150_000) / 1000))
    fired = _feed(evaluator, "rec.all", ["NEUTRAL", "BUY", "SELL", "BUY"], step=100_000)
    assert [t.ts - T0 for t in fired] == [100_000]


def test_muted_rules_are_silent_but_keep_watching() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(muted=True))
    assert _feed(evaluator, "rec.all", ["NEUTRAL", "BUY"]) == []


def test_a_watchlist_fires_for_any_of_its_keys() -> None:
    keys = [Key("summary", f"FX_IDC:{pair}", "1h") for pair in ("EURUSD", "GBPUSD", "USDJPY")]
    evaluator = Evaluator()
    evaluator.add(watchlist(5, 42, keys))
    for key in keys:
        evaluator.evaluate([(key, {"rec.all": "NEUTRAL"}, T0)])
    fired = evaluator.evaluate([(keys[1], {"rec.all": "BUY"}, T0 + 1),
                                (keys[2], {"rec.all": "NEUTRAL"}, T0 + 1)])
    assert [(t.key, t.after) for t in fired] == [(keys[1], "BUY")]


class _Untouchable(Mapping[str, Any]):
    def __getitem__(self, name: str) -> Any:
        raise AssertionError("a key without rules was read")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("a key without rules was read")

    def __len__(self) -> int:
        return 1


def test_only_keys_with_rules_are_read_and_unchanged_outputs_skip() -> None:
    evaluator = Evaluator()
    evaluator.add(_rule())
    stranger = Key("summary", "FX_IDC:USDJPY", "1h")
    assert evaluator.evaluate([(stranger, _Untouchable(), T0)]) == []
    evaluator.remove(1)
    assert evaluator.evaluate([(KEY, _Untouchable(), T0)]) == [] and len(evaluator) == 0


def test_replace_all_keeps_unchanged_rules_and_rearms_new_versions() -> None:
    evaluator = Evaluator()
    rule = _rule()
    evaluator.add(rule)
    _feed(evaluator, "rec.all", ["NEUTRAL"])
    evaluator.replace_all([rule])  # unchanged: still holds NEUTRAL
    assert _moves(_feed(evaluator, "rec.all", ["BUY"])) == [("NEUTRAL", "BUY")]
    evaluator.replace_all([Rule(1, 42, (KEY,), LabelChange(), version=2)])
    # a new version starts afresh from the latest values: its tracks are new ones
    [moved] = _feed(evaluator, "rec.all", ["SELL"])
    assert (moved.before, moved.after, moved.rule.version) == ("BUY", "SELL", 2)
    evaluator.replace_all([])
    assert len(evaluator) == 0 and evaluator.keys == set()


def test_the_same_change_makes_the_same_dedupe_key_and_versions_differ() -> None:
    one, two = Evaluator(), Evaluator()
    one.add(_rule())
    two.add(_rule())
    first = _feed(one, "rec.all", ["NEUTRAL", "BUY"])
    second = _feed(two, "rec.all", ["NEUTRAL", "BUY"])
    assert first[0].dedupe == second[0].dedupe and len(first[0].dedupe) == 64
    three = Evaluator()
    three.add(_rule(version=2))
    assert _feed(three, "rec.all", ["NEUTRAL", "BUY"])[0].dedupe != first[0].dedupe


def test_bar_opens() -> None:
    ts = 1_765_087_200_000 + 5 * 60_000 + 7  # 2025-12-07 06:05:00.007 UTC, a Sunday
    assert bar_open("1h", ts) == 1_765_087_200_000
    assert bar_open("4h", ts) == 1_765_080_000_000  # 04:00
    assert bar_open("1d", ts) == 1_765_065_600_000  # midnight
    assert bar_open("1W", ts) == 1_764_547_200_000  # Monday 2025-12-01
    assert bar_open("1M", ts) == 1_764_547_200_000  # the 1st (also that Monday)


# -- properties --------------------------------------------------------------------------------

ratings = st.floats(-1, 1)


@given(held=st.none() | st.sampled_from(LABELS), rating=ratings, margin=st.floats(0, 0.1))
def test_a_held_label_moves_toward_the_plain_label_and_never_past_it(
        held: str | None, rating: float, margin: float) -> None:
    plain = label(rating)
    assert plain is not None
    got = held_label(held, rating, margin)
    assert got is not None
    if held is None or margin == 0:
        assert got == plain
    else:
        low, high = sorted((RANK[held], RANK[plain]))
        assert low <= RANK[got] <= high


@given(values=st.lists(st.floats(0, 100), max_size=60), margin=st.floats(0, 10),
       level=st.floats(10, 90))
def test_a_crossing_fires_once_per_swing_past_the_margin(
        values: list[float], margin: float, level: float) -> None:
    """Between two firings the value went back to level + margin or above; every firing is
    a value below the level; and a swing that goes that far back and down again fires."""
    evaluator = Evaluator()
    evaluator.add(_rule(Crossing("RSI", "below", level, margin), frequency="every_time"))
    fired = _feed(evaluator, "RSI", values)
    fired_at = {t.ts for t in fired}
    armed: bool | None = None
    for i, value in enumerate(values):
        at = T0 + i * 60_000
        if i > 0 and value == values[i - 1]:
            assert at not in fired_at  # unchanged: not even looked at
            continue
        should = armed is True and value < level
        assert (at in fired_at) == should, (i, value)
        if armed is None:
            armed = value >= level
        elif should:
            armed = False
        elif armed is False and value >= level + margin:
            armed = True


@given(labels=st.lists(st.sampled_from(LABELS), max_size=40),
       to=st.frozensets(st.sampled_from(LABELS)))
def test_label_firings_are_exactly_the_matching_changes(labels: list[str],
                                                        to: frozenset[str]) -> None:
    evaluator = Evaluator()
    evaluator.add(_rule(LabelChange(to=to)))
    expected = [(a, b) for a, b in pairwise(labels)
                if a != b and (not to or b in to)]
    assert _moves(_feed(evaluator, "rec.all", labels)) == expected


def test_a_rule_added_after_a_publication_starts_from_its_values() -> None:
    evaluator = Evaluator()
    evaluator.evaluate([(KEY, {"rec.all": "NEUTRAL"}, T0)])  # before any rule on KEY
    evaluator.add(_rule(LabelChange(to=frozenset({"BUY"}))))
    fired = evaluator.evaluate([(KEY, {"rec.all": "BUY"}, T0 + 60_000)])
    assert _moves(fired) == [("NEUTRAL", "BUY")]


def test_a_rule_firing_too_often_is_paused_with_one_notice() -> None:
    evaluator = Evaluator(storm=(3, 60.0))
    evaluator.add(_rule())
    labels = ["NEUTRAL", "BUY", "SELL", "BUY", "SELL", "BUY", "SELL"]  # 10 s apart
    fired = _feed(evaluator, "rec.all", labels, step=10_000)
    assert [t.after for t in fired] == ["BUY", "SELL", "BUY", "paused"]
    assert evaluator.paused == {1} and fired[-1].before == "firing"
    # unmuted (the storage muted it; a changed rule comes back): it fires again
    evaluator.replace_all([Rule(1, 42, (KEY,), LabelChange(), version=2)])
    assert [t.after for t in _feed(evaluator, "rec.all", ["BUY"], start=T0 + 600_000)] == [
        "BUY"]


def test_firings_spread_beyond_the_window_never_pause() -> None:
    evaluator = Evaluator(storm=(3, 60.0))
    evaluator.add(_rule())
    labels = ["NEUTRAL", "BUY", "SELL"] * 10
    fired = _feed(evaluator, "rec.all", labels, step=30_000)  # two a minute at most
    assert "paused" not in [t.after for t in fired] and len(fired) == 29


def test_a_deleted_rules_memory_goes_at_the_next_reload() -> None:
    other = Key("summary", "FX_IDC:USDJPY", "1h")
    board = Key("summary", "FX_IDC:GBPUSD", "1h")  # no rule: only a board watches it
    evaluator = Evaluator(keep=HOUR)
    kept, deleted = _rule(id=1, keys=(other,)), _rule(id=2, keys=(KEY,))
    evaluator.replace_all([kept, deleted])
    _feed(evaluator, "rec.all", ["NEUTRAL", "BUY"])  # rule 2 fires: a storm window
    _feed(evaluator, "rec.all", ["NEUTRAL"], key=board)
    assert evaluator._fired and KEY in evaluator.keys
    evaluator.replace_all([kept])  # rule 2 deleted
    assert KEY not in evaluator.keys and 2 not in evaluator and not evaluator._fired
    assert {KEY, board} <= set(evaluator.latest)  # recent: a new rule on them starts from it
    _feed(evaluator, "rec.all", ["SELL"], key=other, start=T0 + 2 * HOUR)
    evaluator.replace_all([kept])  # the next reload (or look at the rules) prunes
    assert set(evaluator.latest) == {other}  # watched keys stay however old
    _feed(evaluator, "rec.all", ["BUY"], key=other, start=T0 + 5 * HOUR)
    assert evaluator.prune() == 0 and set(evaluator.latest) == {other}


def test_a_rule_added_from_newer_values_than_its_keys_rules_saw_sees_the_next_one() -> None:
    """The latest values a new rule starts from may be newer than those the key's other rules
    saw (a profile's data updated in place before its next publication): the next value is
    then a change for the new rule even where it is none for the others."""
    evaluator = Evaluator()
    evaluator.add(_rule(Crossing("RSI", "below", 30), id=1))
    data = {"RSI": 50.0}
    evaluator.evaluate([(KEY, data, T0)])
    data["RSI"] = 20.0  # updated in place, not yet published
    evaluator.add(_rule(Crossing("RSI", "below", 30), id=2))  # starts below 30: not armed
    evaluator.evaluate([(KEY, {"RSI": 50.0}, T0 + 60_000)])  # re-arms rule 2 only
    fired = evaluator.evaluate([(KEY, {"RSI": 25.0}, T0 + 120_000)])
    assert [t.rule.id for t in fired] == [1, 2]
