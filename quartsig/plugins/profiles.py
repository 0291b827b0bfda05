"""The ``Profile`` value: what a subscription asks the scanner for, and how a row becomes data.

A profile is the unit plugins contribute (see :mod:`quartsig.plugins.hookspecs`). It is
validated when it is built, so a plugin with a bad profile fails at start-up with
the profile's name in the message rather than mid-tick with a scanner error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")

Compute = Callable[[Mapping[str, Any]], dict[str, Any]]
ComputeValues = Callable[[Sequence[Any]], dict[str, Any]]
ComputeChanges = Callable[[Sequence[Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]


class ProfileError(ValueError):
    """A profile definition is invalid; the message names the profile."""


@dataclass(frozen=True, slots=True)
class Profile:
    """A named set of base columns and the pure function that turns one row into client data.

    :param name: what clients subscribe with; lower-case, at most 32 characters, so it is
        safe in URLs, metrics labels and log lines.
    :param description: one line shown to people choosing a profile.
    :param columns: base column names (no ``|interval`` suffix: the planner adds it per
        timeframe), each once.
    :param compute: called with one row keyed by base column name, where a missing key means
        null; returns the flat JSON object clients receive. Numbers in it must be finite or
        ``None``. It runs for every row of every tick, so keep it pure and fast.
    :param compute_values: optional, the same function over the row's values in ``columns``
        order (``None`` for a missing one), which saves the collector building the mapping;
        it must return exactly what ``compute`` returns. When given, the collector calls it
        instead of ``compute``.
    :param checked: whether the values it returns are proven JSON-safe by its own tests, so
        the collector may skip checking each one every tick (the built-ins: ~7 µs a ``full``
        row, 70 ms of a 10 000-key tick). A plugin leaves it False; its exceptions and slow
        calls are caught either way.
    :param compute_changes: optional, for a ``checked`` profile: ``(values, previous data) ->
        (data, changes)``, where ``changes`` holds the items of ``data`` that differ (``!=``)
        from ``previous``, in ``data``'s order; ``data`` may be ``previous`` updated in place
        (``previous.update(changes)``) and nothing else. It recomputes only outputs whose
        inputs moved, so a tick costs what changed; the collector uses it when it has the
        key's previous data, and hands the hub ``changes`` so the hub need not diff again.
    """

    name: str
    description: str
    columns: tuple[str, ...]
    compute: Compute
    compute_values: ComputeValues | None = None
    checked: bool = False
    compute_changes: ComputeChanges | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ProfileError(
                f"profile name {self.name!r} must match {NAME_PATTERN.pattern} "
                "(lower-case letter first, at most 32 characters)"
            )
        if not isinstance(self.description, str):
            raise ProfileError(f"profile {self.name!r}: description must be a string")
        if not isinstance(self.columns, tuple):
            # A list would make the frozen profile mutable through the back door.
            raise ProfileError(f"profile {self.name!r}: columns must be a tuple of strings")
        if not self.columns:
            raise ProfileError(f"profile {self.name!r}: needs at least one column")
        for column in self.columns:
            if not isinstance(column, str) or not column or "|" in column:
                raise ProfileError(
                    f"profile {self.name!r}: column {column!r} must be a base name "
                    "(non-empty, without the '|interval' suffix)"
                )
        duplicates = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if duplicates:
            raise ProfileError(f"profile {self.name!r}: duplicate columns {duplicates}")
        if not callable(self.compute):
            raise ProfileError(f"profile {self.name!r}: compute must be callable")
        if self.compute_values is not None and not callable(self.compute_values):
            raise ProfileError(f"profile {self.name!r}: compute_values must be callable")
