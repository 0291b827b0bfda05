"""The README is the operator's manual: keep its configuration table and commands true."""

from __future__ import annotations

import re
from pathlib import Path

from quartsig.config import documented_settings

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
ROW = re.compile(r"^\| `(QUARTSIG_[A-Z_]+)` \| ([^|]*) \| ([^|]+) \|$", re.MULTILINE)


def _table() -> dict[str, tuple[str, str]]:
    return {name: (default, meaning) for name, default, meaning in ROW.findall(README)}


def test_every_setting_has_a_row_with_its_default() -> None:
    table = _table()
    for variable, default, doc in documented_settings():
        assert variable in table, (
            f"README.md's configuration table lacks {variable}; add: "
            f"| `{variable}` | `{default}` | {doc} |"
        )
        if default:
            assert f"`{default}`" in table[variable][0], f"{variable}: default is {default!r}"


def test_no_row_for_a_setting_that_does_not_exist() -> None:
    known = {variable for variable, _, _ in documented_settings()}
    assert set(_table()) <= known


def test_quick_start_is_the_two_commands_ci_runs() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quick_start, re.DOTALL)
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/quartsig serve --demo",
        "./scripts/test",
    ]
    assert "exec ./scripts/test" in (REPO / ".ci" / "run").read_text()


def test_fallback_variables_are_named_in_their_row() -> None:
    from quartsig.config import FALLBACKS, PREFIX

    table = _table()
    for name, fallback in FALLBACKS.items():
        assert f"`{fallback}`" in "".join(table[PREFIX + name.upper()]), (
            f"README.md: say that {PREFIX}{name.upper()} falls back to {fallback}"
        )
