"""The plugin manager: discovery, validation, profile and screener loading, and doc coverage.

Every test builds its own manager (there is no global one), so nothing needs undoing
except modules a test imported itself.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pluggy
import pytest

from quartsig.plugins import hookspecs
from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.loader import (
    DEFAULT_PLUGINS,
    PluginError,
    describe,
    get_plugin_manager,
    inventory,
    load_profiles,
    load_screeners,
    plugin_files,
)
from quartsig.plugins.profiles import Profile

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins.md"

PROFILE_PLUGIN = """
from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.profiles import Profile


def compute(row):
    return {{"close": row.get("close")}}


@hookimpl
def register_profiles():
    return [Profile(name={name!r}, description="test", columns=("close",), compute=compute)]
"""


def _write(directory: Path, filename: str, source: str) -> Path:
    path = directory / filename
    path.write_text(textwrap.dedent(source))
    return path


def _profile(name: str) -> Profile:
    return Profile(name=name, description="test", columns=("close",), compute=dict)


class ProfilePlugin:
    """A one-off plugin object, registered through ``extra`` as an entry point's object would be."""

    def __init__(self, *profiles: Any) -> None:
        self.profiles = profiles

    @hookimpl
    def register_profiles(self) -> Any:
        return list(self.profiles)


class ScreenerPlugin:
    def __init__(self, table: Any) -> None:
        self.table = table

    @hookimpl
    def register_screeners(self) -> Any:
        return self.table


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "plugins"
    directory.mkdir()
    yield directory
    for name in [n for n in sys.modules if n.startswith("quartsig_plugins.")]:
        del sys.modules[name]


# --- the manager ---------------------------------------------------------------------------


def test_default_manager_holds_the_builtins_and_only_quartsig_hooks() -> None:
    pm = get_plugin_manager(entry_points=False)
    assert pm.project_name == "quartsig"
    assert [name for name, _ in pm.list_name_plugin()] == list(DEFAULT_PLUGINS)
    assert sorted(name for name in vars(pm.hook) if not name.startswith("_")) == [
        "register_channels",
        "register_profiles",
        "register_screeners",
    ]


def test_each_call_builds_an_independent_manager() -> None:
    first = get_plugin_manager(entry_points=False, extra=[ProfilePlugin(_profile("one"))])
    second = get_plugin_manager(entry_points=False)
    assert "one" in load_profiles(first)
    assert "one" not in load_profiles(second)


def test_misspelled_hook_is_caught_by_check_pending() -> None:
    class Typo:
        @hookimpl
        def register_profile(self) -> list[Profile]:  # missing "s"
            return []

    with pytest.raises(PluginError, match=r"plugin 'Typo' is invalid: .*register_profile"):
        get_plugin_manager(entry_points=False, extra=[Typo()])


def test_hook_implementation_with_unknown_argument_is_refused() -> None:
    class Greedy:
        @hookimpl
        def register_profiles(self, settings: object) -> list[Profile]:
            return []

    with pytest.raises(PluginError, match=r"plugin 'Greedy' cannot be registered: .*settings"):
        get_plugin_manager(entry_points=False, extra=[Greedy()])


def test_the_same_plugin_twice_is_refused() -> None:
    plugin = ProfilePlugin()
    with pytest.raises(PluginError, match="cannot be registered"):
        get_plugin_manager(entry_points=False, extra=[plugin, plugin])


# --- the plugins directory -----------------------------------------------------------------


def test_plugins_dir_loads_sorted_python_files_skipping_private_and_tests(
    plugins_dir: Path,
) -> None:
    _write(plugins_dir, "zeta.py", PROFILE_PLUGIN.format(name="zeta"))
    _write(plugins_dir, "alpha.py", PROFILE_PLUGIN.format(name="alpha"))
    _write(plugins_dir, "_helper.py", "raise RuntimeError('helpers are not plugins')")
    _write(plugins_dir, "test_alpha.py", "raise RuntimeError('tests are not plugins')")
    _write(plugins_dir, "notes.txt", "not python")
    (plugins_dir / "package.py").mkdir()  # a directory that looks like a file is skipped

    assert [p.name for p in plugin_files(plugins_dir)] == ["alpha.py", "zeta.py"]
    pm = get_plugin_manager(plugins_dir, entry_points=False)
    assert list(load_profiles(pm)) == ["full", "summary", "alpha", "zeta"]
    module = pm.get_plugin(str(plugins_dir / "alpha.py"))
    assert module.__name__ == "quartsig_plugins.alpha"


def test_missing_plugins_dir_is_not_an_error(tmp_path: Path) -> None:
    pm = get_plugin_manager(tmp_path / "absent", entry_points=False)
    assert list(load_profiles(pm)) == ["full", "summary"]


def test_plugin_file_that_fails_to_import_names_the_file(plugins_dir: Path) -> None:
    path = _write(plugins_dir, "broken.py", "import quartsig_no_such_module\n")
    with pytest.raises(PluginError) as info:
        get_plugin_manager(plugins_dir, entry_points=False)
    message = str(info.value)
    assert message.startswith(f"plugin {str(path)!r} failed to load: ModuleNotFoundError")
    assert "quartsig_no_such_module" in message
    assert "quartsig_plugins.broken" not in sys.modules


def test_plugin_file_with_a_syntax_error_names_the_file(plugins_dir: Path) -> None:
    path = _write(plugins_dir, "typo.py", "def register_profiles(:\n")
    with pytest.raises(PluginError, match=re.escape(f"plugin {str(path)!r} failed to load")):
        get_plugin_manager(plugins_dir, entry_points=False)


def test_shipped_plugins_dir_loads() -> None:
    pm = get_plugin_manager(ROOT / "plugins", entry_points=False)
    profiles = load_profiles(pm)
    assert {"full", "summary", "ma", "pivots"} <= set(profiles)


# --- entry points --------------------------------------------------------------------------


def _install_fake_distribution(
    site: Path, monkeypatch: pytest.MonkeyPatch, ep_name: str, source: str
) -> str:
    """Lay out a distribution with a ``quartsig`` entry point on sys.path, as pip would."""
    module = f"quartsig_test_ep_{uuid.uuid4().hex[:8]}"
    dist = f"quartsig_fake_{module[-8:]}"
    _write(site, f"{module}.py", source)
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[quartsig]\n{ep_name} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return module


def test_entry_point_plugins_are_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _install_fake_distribution(
        tmp_path, monkeypatch, "fancy", PROFILE_PLUGIN.format(name="fancy")
    )
    try:
        pm = get_plugin_manager()
        assert pm.get_plugin("fancy").__name__ == module
        assert "fancy" in load_profiles(pm)
        assert [dist.project_name for _, dist in pm.list_plugin_distinfo()] == [
            f"quartsig_fake_{module[-8:]}"
        ]
        assert "fancy" not in load_profiles(get_plugin_manager(entry_points=False))
    finally:
        sys.modules.pop(module, None)


def test_entry_point_that_fails_to_import_names_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _install_fake_distribution(tmp_path, monkeypatch, "shaky", "1 / 0\n")
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    assert str(info.value).startswith(
        f"plugin 'shaky' ({module}) failed to load: ZeroDivisionError"
    )


# --- register_profiles ---------------------------------------------------------------------


def test_hook_register_channels_adds_a_channel_beside_the_builtin_webhook() -> None:
    from quartsig.alerts import webhooks
    from quartsig.alerts.channels import ChannelError, Outcome, load_channels

    class Slack:
        kind = "slack"

        async def send(self, message: object, target: object) -> Outcome:
            return Outcome("sent")

    class SlackPlugin:
        @hookimpl
        def register_channels(self) -> list[Slack]:
            return [Slack()]

    pm = get_plugin_manager(entry_points=False, extra=[SlackPlugin()])
    assert sorted(load_channels(pm, (webhooks,))) == ["slack", "webhook"]

    class Clash:
        @hookimpl
        def register_channels(self) -> list[object]:
            return [webhooks.WebhookChannel()]

    with pytest.raises(ChannelError, match="'webhook' comes from both"):
        load_channels(get_plugin_manager(entry_points=False, extra=[Clash()]), (webhooks,))
    with pytest.raises(ChannelError, match="not a channel"):
        load_channels(get_plugin_manager(entry_points=False, extra=[_Junk()]))


class _Junk:
    @hookimpl
    def register_channels(self) -> list[object]:
        return ["slack"]


def test_hook_register_profiles_collects_profiles_from_every_plugin() -> None:
    pm = get_plugin_manager(
        entry_points=False, extra=[ProfilePlugin(_profile("one"), _profile("two"))]
    )
    profiles = load_profiles(pm)
    assert list(profiles) == ["full", "summary", "one", "two"]
    assert all(isinstance(p, Profile) for p in profiles.values())


def test_hook_register_profiles_accepts_any_iterable_and_none() -> None:
    class Generator:
        @hookimpl
        def register_profiles(self) -> Iterator[Profile]:
            yield _profile("gen")

    class Nothing:
        @hookimpl
        def register_profiles(self) -> None:
            return None

    pm = get_plugin_manager(entry_points=False, extra=[Generator(), Nothing()])
    assert list(load_profiles(pm)) == ["full", "summary", "gen"]


def test_hook_register_profiles_duplicate_name_names_both_plugins(plugins_dir: Path) -> None:
    path = _write(plugins_dir, "mine.py", PROFILE_PLUGIN.format(name="summary"))
    pm = get_plugin_manager(plugins_dir, entry_points=False)
    with pytest.raises(PluginError) as info:
        load_profiles(pm)
    assert str(info.value) == (
        "profile 'summary' is registered twice: by plugin 'quartsig.plugins.builtins.summary' "
        f"and by plugin {str(path)!r}"
    )


def test_hook_register_profiles_duplicate_within_one_plugin() -> None:
    pm = get_plugin_manager(
        entry_points=False, extra=[ProfilePlugin(_profile("same"), _profile("same"))]
    )
    with pytest.raises(PluginError, match=r"'same' is registered twice.*'ProfilePlugin'"):
        load_profiles(pm)


@pytest.mark.parametrize("junk", [{"name": "x"}, "full", None, 42])
def test_hook_register_profiles_rejects_non_profiles(junk: object) -> None:
    pm = get_plugin_manager(entry_points=False, extra=[ProfilePlugin(junk)])
    with pytest.raises(PluginError, match=r"plugin 'ProfilePlugin': register_profiles returned a"):
        load_profiles(pm)


@pytest.mark.parametrize("result", [_profile("alone"), "summary", {"a": 1}, 42])
def test_hook_register_profiles_rejects_a_non_iterable_result(result: object) -> None:
    class Bare:
        @hookimpl
        def register_profiles(self) -> object:
            return result

    pm = get_plugin_manager(entry_points=False, extra=[Bare()])
    with pytest.raises(PluginError, match=r"plugin 'Bare': register_profiles must return"):
        load_profiles(pm)


def test_hook_register_profiles_that_raises_names_the_plugin() -> None:
    class Exploding:
        @hookimpl
        def register_profiles(self) -> list[Profile]:
            raise KeyError("boom")

    pm = get_plugin_manager(entry_points=False, extra=[Exploding()])
    with pytest.raises(PluginError, match=r"plugin 'Exploding': register_profiles raised KeyError"):
        load_profiles(pm)


def test_hook_register_profiles_invalid_profile_fails_in_the_plugin(plugins_dir: Path) -> None:
    path = _write(
        plugins_dir,
        "bad.py",
        """
        from quartsig.plugins.profiles import Profile

        BAD = Profile(name="Bad Name", description="", columns=("close",), compute=dict)
        """,
    )
    with pytest.raises(PluginError, match=re.escape(f"{str(path)!r} failed to load: ProfileError")):
        get_plugin_manager(plugins_dir, entry_points=False)


def test_hook_register_profiles_skips_wrappers() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def register_profiles(self) -> Iterator[None]:
            return (yield)

    pm = get_plugin_manager(entry_points=False, extra=[Wrapper()])
    assert list(load_profiles(pm)) == ["full", "summary"]


# --- register_screeners --------------------------------------------------------------------

BASE = {"NASDAQ": "america", "binance": "crypto", "FX_IDC": "forex"}


def test_hook_register_screeners_extends_and_overrides_the_table() -> None:
    pm = get_plugin_manager(
        entry_points=False,
        extra=[ScreenerPlugin({"moex": "russia", "BINANCE": "cfd"}), ScreenerPlugin({"Lse": "uk"})],
    )
    assert load_screeners(pm, BASE) == {
        "NASDAQ": "america",
        "BINANCE": "cfd",
        "FX_IDC": "forex",
        "MOEX": "russia",
        "LSE": "uk",
    }


def test_hook_register_screeners_later_plugins_win() -> None:
    pm = get_plugin_manager(
        entry_points=False,
        extra=[ScreenerPlugin({"MOEX": "russia"}), ScreenerPlugin({"moex": "cfd"})],
    )
    assert load_screeners(pm, {})["MOEX"] == "cfd"


def test_hook_register_screeners_without_plugins_copies_the_base() -> None:
    base: Mapping[str, str] = {"nasdaq": "america"}
    result = load_screeners(get_plugin_manager(entry_points=False), base)
    assert result == {"NASDAQ": "america"}
    assert base == {"nasdaq": "america"}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (["MOEX", "russia"], "must return a mapping"),
        ({"": "russia"}, "non-empty exchange"),
        ({"MOEX": 3}, "non-empty exchange string to a screener string"),
        ({1: "russia"}, "non-empty exchange"),
        ({"MOEX": ""}, "empty screener"),
    ],
)
def test_hook_register_screeners_rejects_bad_entries(table: object, message: str) -> None:
    pm = get_plugin_manager(entry_points=False, extra=[ScreenerPlugin(table)])
    with pytest.raises(PluginError, match=f"plugin 'ScreenerPlugin'.*{message}"):
        load_screeners(pm, BASE)


# --- meta: every hook is documented and tested (Datasette style) ---------------------------


def _hookspecs() -> dict[str, Any]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: fn for name, fn in vars(hookspecs).items() if hasattr(fn, marker)}


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_hookspecs_are_found() -> None:
    assert set(_hookspecs()) == {"register_channels", "register_profiles", "register_screeners"}


@pytest.mark.parametrize("hook", sorted(_hookspecs()))
def test_every_hook_has_a_docstring_with_a_return_line(hook: str) -> None:
    doc = inspect.getdoc(_hookspecs()[hook])
    assert doc, f"hookspec {hook} has no docstring"
    assert ":return:" in doc


@pytest.mark.parametrize("hook", sorted(_hookspecs()))
def test_every_hook_has_a_test(hook: str) -> None:
    tests = [name for name in globals() if name.startswith(f"test_hook_{hook}")]
    assert tests, f"no test named test_hook_{hook}* in {__name__}"


@pytest.mark.parametrize("hook", sorted(_hookspecs()))
def test_every_hook_is_documented_with_its_docstring(hook: str) -> None:
    docs = DOCS.read_text()
    assert f"### `{hook}()`" in docs, f"docs/plugins.md has no section for {hook}"
    doc = inspect.getdoc(_hookspecs()[hook]) or ""
    assert _squash(doc) in _squash(docs), (
        f"the reference for {hook} in docs/plugins.md differs from its hookspec docstring"
    )


def test_docs_example_plugin_works(plugins_dir: Path) -> None:
    docs = DOCS.read_text()
    match = re.search(r"<!-- example-plugin -->\s*```python\n(.*?)```", docs, re.DOTALL)
    assert match, "docs/plugins.md lost its marked example plugin"
    _write(plugins_dir, "spread.py", match.group(1))
    pm = get_plugin_manager(plugins_dir, entry_points=False)
    profile = load_profiles(pm)["spread"]
    data = profile.compute({"high": 12.0, "low": 10.0, "close": 11.0})
    assert data == {"high": 12.0, "low": 10.0, "close": 11.0, "spread.pct": 18.18}
    assert profile.compute({"high": None, "close": "x"})["spread.pct"] is None


def test_pluggy_is_the_one_we_document() -> None:
    assert isinstance(get_plugin_manager(entry_points=False), pluggy.PluginManager)


# --- start-up checks and the inventory -----------------------------------------------------


def test_a_column_outside_the_catalogue_warns_naming_the_profile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    odd = Profile(name="odd", description="test", columns=("close", "Not.A.Column"), compute=dict)
    with caplog.at_level(logging.WARNING, logger="quartsig.plugins.loader"):
        profiles = load_profiles(get_plugin_manager(entry_points=False, extra=[ProfilePlugin(odd)]))
    assert "odd" in profiles  # warned, not refused: the catalogue is not TradingView's list
    [record] = [r for r in caplog.records if "Not.A.Column" in r.getMessage()]
    assert "'ProfilePlugin'" in record.getMessage() and "'odd'" in record.getMessage()
    assert "close" not in record.getMessage().split("column(s)")[1].split("that")[0]


def _raising(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"pct": row["high"] / row["close"]}


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        (_raising, "fails on a row of nulls (compute raised TypeError: unsupported operand"),
        (lambda row: {"x": float("nan")}, "fails on a row of nulls (compute returned nan"),
        (lambda row: [1], "fails on a row of nulls (compute returned a list, not a dict)"),
    ],
)
def test_a_compute_that_fails_on_nulls_stops_start_up_in_one_line(
    compute: Any, message: str
) -> None:
    bad = Profile(name="bad", description="test", columns=("high", "close"), compute=compute)
    with pytest.raises(PluginError) as info:
        load_profiles(get_plugin_manager(entry_points=False, extra=[ProfilePlugin(bad)]))
    text = str(info.value)
    assert text.startswith(f"plugin 'ProfilePlugin': profile 'bad' {message}")
    assert "\n" not in text


def test_compute_and_compute_values_must_agree_on_nulls() -> None:
    twin = Profile(name="twin", description="test", columns=("close",), compute=dict,
                   compute_values=lambda values: {"other": 1})
    with pytest.raises(PluginError, match="compute and compute_values disagree"):
        load_profiles(get_plugin_manager(entry_points=False, extra=[ProfilePlugin(twin)]))


def test_inventory_says_where_each_plugin_and_profile_came_from(
    tmp_path: Path, plugins_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(plugins_dir, "filed.py", PROFILE_PLUGIN.format(name="filed"))
    module = _install_fake_distribution(
        tmp_path, monkeypatch, "packed", PROFILE_PLUGIN.format(name="packed")
    )
    try:
        pm = get_plugin_manager(plugins_dir, extra=[ProfilePlugin(_profile("objected"))])
        found = {info.name: info for info in inventory(pm)}
    finally:
        sys.modules.pop(module, None)
    assert found["quartsig.plugins.builtins.full"].source == "built-in"
    assert [p.name for p in found["quartsig.plugins.builtins.summary"].profiles] == ["summary"]
    assert found["packed"].source == f"package quartsig_fake_{module[-8:]} 1.0"
    assert found[str(plugins_dir / "filed.py")].source == f"file {plugins_dir / 'filed.py'}"
    assert found["ProfilePlugin"].source == "object ProfilePlugin"
    lines = describe(found.values())
    assert "  packed: close" in lines and "  objected: close" in lines
