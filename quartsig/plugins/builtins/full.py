"""The ``full`` profile: every column tradingview-ta requests, with labels, actions and counts.

This runs for every row of every tick (10 000 rows within a ~200 ms tick budget),
so the per-row work is laid out once at import: the key names are precomputed and
the row is cleaned once, after which each rule reads the clean values directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from quartsig.domain.columns import FULL_COLUMNS
from quartsig.domain.rules import (
    BUY,
    MOVING_AVERAGES,
    NEUTRAL,
    OSCILLATORS,
    SELL,
    decide_all,
    label,
    number,
    numbers,
)
from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.profiles import Profile

_OSCILLATOR_RULES: Final = tuple(OSCILLATORS.values())
_OSCILLATOR_KEYS: Final = tuple(f"act.{name}" for name in OSCILLATORS)
_AVERAGE_RULES: Final = tuple(MOVING_AVERAGES.values())
_AVERAGE_KEYS: Final = tuple(f"act.{name}" for name in MOVING_AVERAGES)
_COUNT_KEYS: Final = ("osc.buy", "osc.sell", "osc.neutral", "ma.buy", "ma.sell", "ma.neutral")

#: Every key of the data object, in output order. Copying this pre-sized dict per row is
#: cheaper than growing a fresh one key by key.
KEYS: Final = (
    *FULL_COLUMNS,
    *("rec.all", "rec.ma", "rec.other"),
    *_OSCILLATOR_KEYS,
    *_AVERAGE_KEYS,
    *_COUNT_KEYS,
)
_TEMPLATE: Final[dict[str, Any]] = dict.fromkeys(KEYS)


def compute(row: Mapping[str, Any]) -> dict[str, Any]:
    """Every base column (number or null), then ``rec.*``, ``act.*`` and the counts."""
    data = numbers(row, FULL_COLUMNS, into=_TEMPLATE.copy())
    data["rec.all"] = label(data["Recommend.All"])
    data["rec.ma"] = label(data["Recommend.MA"])
    data["rec.other"] = label(data["Recommend.Other"])
    oscillators = decide_all(_OSCILLATOR_RULES, data)
    averages = decide_all(_AVERAGE_RULES, data)
    data.update(zip(_OSCILLATOR_KEYS, oscillators, strict=True))
    data.update(zip(_AVERAGE_KEYS, averages, strict=True))
    data["osc.buy"] = oscillators.count(BUY)
    data["osc.sell"] = oscillators.count(SELL)
    data["osc.neutral"] = oscillators.count(NEUTRAL)
    data["ma.buy"] = averages.count(BUY)
    data["ma.sell"] = averages.count(SELL)
    data["ma.neutral"] = averages.count(NEUTRAL)
    return data


def _compile_kernel() -> Callable[[Sequence[Any]], dict[str, Any]]:
    """:func:`compute` as one straight-line function over the values in ``FULL_COLUMNS``
    order, generated from the same rule table.

    Written out by hand this would be 200 lines that could drift from :mod:`quartsig.domain.rules`;
    generated, every value lives in a local, each rule is one inline null check and one call,
    and the output is a copy of the pre-sized template filled in key by key (a dict display
    of 126 items is built by growing it, 1.6x slower): about half the time of :func:`compute`
    per row with its mapping, for the same dict, key order included (tests/test_builtins.py
    checks it on arbitrary rows). Only names from this module's own tables reach the source
    text.
    """
    names = {name: f"v{i}" for i, name in enumerate(FULL_COLUMNS)}
    scope: dict[str, Any] = {"number": number, "label": label,
                             "BUY": BUY, "SELL": SELL, "NEUTRAL": NEUTRAL}
    lines = ["def compute_values(values):", f"    {', '.join(names.values())}, = values"]
    lines += [f"    if type({v}) is not float or {v} - {v} != 0.0: {v} = number({v})"
              for v in names.values()]
    actions: dict[str, list[str]] = {"osc": [], "ma": []}
    for group, table in (("osc", OSCILLATORS), ("ma", MOVING_AVERAGES)):
        for index, rule in enumerate(table.values()):
            decide, action = f"decide_{group}{index}", f"{group}{index}"
            scope[decide] = rule.decide
            args = [names[column] for column in rule.inputs]
            nulls = " or ".join(f"{arg} is None" for arg in args)
            lines.append(f"    {action} = None if {nulls} else {decide}({', '.join(args)})")
            actions[group].append(action)
    for group, members in actions.items():
        lines.append(f"    {group} = ({', '.join(members)},)")
    items = [(name, v) for name, v in names.items()]
    items += [(key, f"label({names[column]})") for key, column in
              (("rec.all", "Recommend.All"), ("rec.ma", "Recommend.MA"),
               ("rec.other", "Recommend.Other"))]
    items += zip((*_OSCILLATOR_KEYS, *_AVERAGE_KEYS), (*actions["osc"], *actions["ma"]),
                 strict=True)
    items += [(f"{group}.{side.lower()}", f"{group}.count({side})")
              for group in ("osc", "ma") for side in ("BUY", "SELL", "NEUTRAL")]
    assert tuple(key for key, _ in items) == KEYS  # the template's order is the output's
    scope["TEMPLATE"] = _TEMPLATE
    lines.append("    data = TEMPLATE.copy()")
    lines += [f"    data[{key!r}] = {value}" for key, value in items]
    lines.append("    return data")
    exec(compile("\n".join(lines), "<quartsig.plugins.builtins.full kernel>", "exec"), scope)
    kernel: Callable[[Sequence[Any]], dict[str, Any]] = scope["compute_values"]
    return kernel


compute_values: Final = _compile_kernel()


def _compile_changes() -> Callable[
    [Sequence[Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]
]:
    """``compute_values`` and the diff against the previous data in one pass, recomputing
    only what moved: ``(values, previous) -> (data, changes)``.

    On a 20 s tick most of a key's inputs stand still, and a rule whose inputs did not move
    gives the same action, so its previous output is kept rather than recomputed; the diff the
    hub would have made (``!=``, in the data's key order) falls out of the same comparisons.
    A clean value is compared with the previous clean value (what ``previous`` holds), which
    is what the rules see: equal inputs (``==``) give equal actions and labels. ``data`` is
    ``previous`` itself, updated in place with ``changes``: no copy of 126 values, no old dict
    to free. Walking the values of 10 000 keys' data is memory-bound (py-spy put a fifth of a
    tick on unpacking and copying old data), so every pass saved counts. It equals what
    :func:`compute_values` returns, value for value (``==``) and in key order; a value equal to
    its previous one keeps the previous object (``1`` for ``1.0``, ``0.0`` for ``-0.0``), as
    the hub always has (it stores nothing for a key whose inputs are all equal). Updating in
    place is safe for the hub's readers: a snapshot is encoded when it is made, and a pending
    snapshot merged with a later update becomes previous + changes, which this is.
    tests/test_builtins.py checks both against :func:`compute_values` and the hub's diff.
    ``previous`` must be data of this profile (its keys in ``KEYS`` order).
    """
    names = {name: f"v{i}" for i, name in enumerate(FULL_COLUMNS)}
    olds = {key: f"p{i}" for i, key in enumerate(KEYS)}
    scope: dict[str, Any] = {"number": number, "label": label,
                             "BUY": BUY, "SELL": SELL, "NEUTRAL": NEUTRAL}
    lines = ["def compute_changes(values, previous):",
             f"    {', '.join(names.values())}, = values",
             f"    {', '.join(olds.values())}, = previous.values()",
             "    out = {}"]
    for name, v in names.items():
        lines += [f"    if type({v}) is not float or {v} - {v} != 0.0:",
                  f"        {v} = None if {v} is None else number({v})",
                  f"    c{v} = {v} != {olds[name]}",
                  f"    if c{v}: out[{name!r}] = {v}"]
    for key, column in (("rec.all", "Recommend.All"), ("rec.ma", "Recommend.MA"),
                        ("rec.other", "Recommend.Other")):
        v, p = names[column], olds[key]
        lines += [f"    if c{v}:",
                  f"        r = label({v})",
                  f"        if r != {p}: out[{key!r}] = r"]
    actions: dict[str, list[str]] = {"osc": [], "ma": []}
    for group, table, keys in (("osc", OSCILLATORS, _OSCILLATOR_KEYS),
                               ("ma", MOVING_AVERAGES, _AVERAGE_KEYS)):
        for index, (rule, key) in enumerate(zip(table.values(), keys, strict=True)):
            decide, action, p = f"decide_{group}{index}", f"{group}{index}", olds[key]
            scope[decide] = rule.decide
            args = [names[column] for column in rule.inputs]
            moved = " or ".join(f"c{arg}" for arg in args)
            nulls = " or ".join(f"{arg} is None" for arg in args)
            lines += [f"    if {moved}:",
                      f"        {action} = None if {nulls} else {decide}({', '.join(args)})",
                      f"        if {action} != {p}: out[{key!r}] = {action}",
                      "    else:",
                      f"        {action} = {p}"]
            actions[group].append(action)
    for group, members in actions.items():
        lines.append(f"    {group} = ({', '.join(members)},)")
        for side in ("BUY", "SELL", "NEUTRAL"):
            key = f"{group}.{side.lower()}"
            lines += [f"    n = {group}.count({side})",
                      f"    if n != {olds[key]}: out[{key!r}] = n"]
    lines.append("    previous.update(out)")
    lines.append("    return previous, out")
    exec(compile("\n".join(lines), "<quartsig.plugins.builtins.full changes>", "exec"), scope)
    kernel: Callable[[Sequence[Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]
    kernel = scope["compute_changes"]
    return kernel


compute_changes: Final = _compile_changes()


PROFILE = Profile(
    name="full",
    description=(
        "Every indicator column, TradingView's three ratings as labels, "
        "per-indicator actions and their counts"
    ),
    columns=FULL_COLUMNS,
    compute=compute,
    compute_values=compute_values,
    checked=True,  # tests/test_builtins.py runs it over arbitrary rows (quartsig.testing)
    compute_changes=compute_changes,
)


@hookimpl
def register_profiles() -> list[Profile]:
    return [PROFILE]
