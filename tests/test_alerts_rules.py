"""Alert rules: built from their JSON spec and back, refused with the field named."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quartsig.alerts.rules import (
    FREQUENCIES,
    LABELS,
    Crossing,
    LabelChange,
    Rule,
    RuleError,
    rule_from_spec,
    watchlist,
)
from quartsig.domain.model import Key

KEY = Key("summary", "FX_IDC:EURUSD", "1h")


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "keys": [["summary", "FX_IDC:EURUSD", "1h"]],
        "condition": {"kind": "label", "output": "rec.all", "to": ["STRONG_BUY"]},
    }
    spec.update(changes)
    return spec


def test_a_spec_builds_its_rule() -> None:
    rule = rule_from_spec(_spec(frequency="once_per_bar", cooldown=60), id=7, owner=42)
    assert rule.keys == (KEY,)
    assert rule.condition == LabelChange(to=frozenset({"STRONG_BUY"}))
    assert (rule.id, rule.owner, rule.frequency, rule.cooldown) == (7, 42, "once_per_bar", 60.0)


conditions = st.one_of(
    st.builds(LabelChange, output=st.sampled_from(["rec.all", "rec.ma"]),
              to=st.frozensets(st.sampled_from(LABELS)),
              from_=st.frozensets(st.sampled_from(LABELS)),
              margin=st.floats(0, 0.1)),
    st.builds(Crossing, output=st.sampled_from(["RSI", "Stoch.K"]),
              direction=st.sampled_from(["above", "below"]),
              level=st.floats(-1e6, 1e6), margin=st.floats(0, 100)),
)


@given(condition=conditions, frequency=st.sampled_from(FREQUENCIES),
       cooldown=st.floats(0, 86400), expires=st.none() | st.floats(0, 4e9))
def test_spec_round_trips(condition: Any, frequency: Any, cooldown: float,
                          expires: float | None) -> None:
    rule = Rule(3, 9, (KEY,), condition, frequency, cooldown, expires)
    assert rule_from_spec(rule.spec(), id=3, owner=9) == rule


def test_a_watchlist_spans_keys_and_round_trips() -> None:
    keys = [KEY, Key("full", "BINANCE:BTCUSDT", "4h"), KEY]
    rule = watchlist(1, 2, keys)
    assert rule.keys == (KEY, Key("full", "BINANCE:BTCUSDT", "4h"))
    assert rule_from_spec(rule.spec(), id=1, owner=2) == rule


@pytest.mark.parametrize(("spec", "field"), [
    ("nope", "rule"),
    (_spec(keys=[]), "keys"),
    (_spec(keys="EURUSD"), "keys"),
    (_spec(keys=[["summary", "FX_IDC:EURUSD", "7h"]]), "keys"),
    (_spec(keys=[["summary", "A", "1h"], ["summary", "B", "1h"]]), "keys"),
    (_spec(condition={"kind": "label", "to": ["MOON"]}), "to"),
    (_spec(condition={"kind": "label", "margin": 0.3}), "margin"),
    (_spec(condition={"kind": "label", "output": "act.RSI", "margin": 0.05}), "margin"),
    (_spec(condition={"kind": "cross", "output": "RSI", "direction": "down", "level": 30}),
     "direction"),
    (_spec(condition={"kind": "cross", "output": "RSI", "direction": "below",
                      "level": float("nan")}), "level"),
    (_spec(condition={"kind": "cross", "output": "RSI", "direction": "below", "level": True}),
     "level"),
    (_spec(condition={"kind": "magic"}), "condition"),
    (_spec(frequency="hourly"), "frequency"),
    (_spec(cooldown=-1), "cooldown"),
    (_spec(expires_at="tomorrow"), "expires_at"),
    (_spec(colour="red"), "colour"),
    (_spec(watchlist=True, condition={"kind": "cross", "output": "RSI", "direction": "below",
                                      "level": 30}), "condition"),
])
def test_bad_input_names_the_field(spec: Any, field: str) -> None:
    with pytest.raises(RuleError) as caught:
        rule_from_spec(spec)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
