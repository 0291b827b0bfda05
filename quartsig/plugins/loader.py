"""Building the plugin manager, and gathering profiles and screeners from it.

There is no module-global manager: :func:`get_plugin_manager` builds a fresh one,
so each test (and each app) gets its own and nothing needs resetting. Every way a
plugin can be wrong (it fails to import, misspells a hook, returns a duplicate or a
non-profile) becomes a :class:`PluginError` at start-up that names the plugin, because
a deployment that silently drops a profile is worse than one that refuses to start.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import pluggy

from quartsig.domain.columns import KNOWN_COLUMNS
from quartsig.plugins import hookspecs
from quartsig.plugins.guard import Failure, run_compute
from quartsig.plugins.profiles import Profile

log = logging.getLogger(__name__)

DEFAULT_PLUGINS: Final = ("quartsig.plugins.builtins.full", "quartsig.plugins.builtins.summary")

ENTRY_POINT_GROUP: Final = hookspecs.PROJECT

#: Modules loaded from the plugins directory live under this prefix in ``sys.modules``,
#: so a plugin file called ``json.py`` cannot shadow the standard library.
DIRECTORY_PACKAGE: Final = "quartsig_plugins"


class PluginError(RuntimeError):
    """A plugin cannot be loaded or gave something unusable; the message names the plugin."""


def get_plugin_manager(
    plugins_dir: Path | None = None,
    *,
    entry_points: bool = True,
    extra: Iterable[object] = (),
) -> pluggy.PluginManager:
    """Build a manager with the built-in plugins, installed plugins and the plugins directory.

    Load order (later plugins can override earlier ones' screeners): built-ins, entry
    points in the ``quartsig`` group, ``*.py`` files in ``plugins_dir`` (sorted; files
    starting with ``_`` or ``test_`` are skipped so helpers and their tests can live
    beside plugins), then ``extra`` objects (how tests register one-off plugins).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        _register(pm, _import(name), name)
    if entry_points:
        _load_entry_points(pm)
    if plugins_dir is not None:
        for path in plugin_files(plugins_dir):
            _register(pm, _load_file(path), str(path))
    for plugin in extra:
        _register(pm, plugin, _extra_name(pm, plugin))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f"plugin {_name(pm, error.plugin)!r} is invalid: {error}") from error
    return pm


def plugin_files(plugins_dir: Path) -> list[Path]:
    """The plugin modules in ``plugins_dir``, in load order; none if it does not exist.

    A missing directory is not an error because the default (``./plugins``) is relative
    to wherever the server happens to start.
    """
    if not plugins_dir.is_dir():
        return []
    return [
        path
        for path in sorted(plugins_dir.glob("*.py"))
        if path.is_file() and not path.name.startswith(("_", "test_"))
    ]


def load_profiles(pm: pluggy.PluginManager) -> dict[str, Profile]:
    """Every registered profile by name, in plugin registration order, each checked.

    Each implementation is called directly rather than through ``pm.hook`` so that
    every profile is known to come from a particular plugin, which is what lets a
    duplicate name be reported with both culprits. See :func:`check_profile` for the checks.
    """
    return {profile.name: profile for _, profile in _gather(pm)}


def check_profile(plugin: str, profile: Profile) -> None:
    """What can be known of a profile before any data: its columns, and ``compute`` on nulls.

    A column quartsig's catalogue does not list gets a warning naming the profile, not a
    refusal: the catalogue is not TradingView's whole list (a column TradingView refuses is
    quarantined at run time, charged to this profile alone).

    ``compute`` is run once on a row of nulls, and a raise or a result that is not a flat
    dict of JSON scalars stops start-up with one line naming the plugin and profile. That is
    a refusal, not a warning, because nulls are not an edge case: TradingView sends them for
    forex volumes, new listings and symbols without technicals, so such a profile would fail
    on real rows from its first tick, and the author learns it now, not from subscribers.
    """
    unknown = [column for column in profile.columns if column not in KNOWN_COLUMNS]
    if unknown:
        log.warning(
            "plugin %r: profile %r asks for column(s) %s that quartsig's catalogue "
            "(quartsig.domain.columns) does not list; if TradingView refuses one, it is left out "
            "and the profile's subscribers are told", plugin, profile.name, ", ".join(unknown),
        )
    nulls = (None,) * len(profile.columns)
    result = run_compute(profile, profile.columns, nulls, budget=float("inf"))
    if isinstance(result, Failure):
        raise PluginError(
            f"plugin {plugin!r}: profile {profile.name!r} fails on a row of nulls "
            f"({result.message}); compute must handle null inputs"
        )
    if profile.compute_values is not None:
        mapping = profile.compute({})
        if mapping != result:
            raise PluginError(
                f"plugin {plugin!r}: profile {profile.name!r}: compute and compute_values "
                "disagree on a row of nulls"
            )


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One loaded plugin: its name, where it came from, and the profiles it contributes."""

    name: str
    source: str  # "built-in", "package quartsig-spread 1.0.0", "file plugins/spread.py", ...
    profiles: tuple[Profile, ...]


def inventory(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every registered plugin, in load order, with its source and profiles (``quartsig
    plugins`` prints this; ``serve`` logs it at start)."""
    by_plugin: dict[str, list[Profile]] = {}
    for plugin, profile in _gather(pm):
        by_plugin.setdefault(plugin, []).append(profile)
    packages = {
        _name(pm, plugin): f"package {dist.project_name} {dist.version}"
        for plugin, dist in pm.list_plugin_distinfo()
    }
    found = []
    for name, registered in pm.list_name_plugin():
        if name in DEFAULT_PLUGINS:
            source = "built-in"
        elif name in packages:
            source = packages[name]
        elif isinstance(registered, ModuleType) and registered.__name__.startswith(
            DIRECTORY_PACKAGE + "."
        ):
            source = f"file {name}"
        else:
            source = f"object {type(registered).__name__}"
        found.append(PluginInfo(name, source, tuple(by_plugin.get(name, ()))))
    return found


def describe(plugins: Iterable[PluginInfo]) -> list[str]:
    """Lines for people: one per plugin, then one per profile with its columns."""
    lines = []
    for info in plugins:
        lines.append(f"{info.name} ({info.source})")
        for profile in info.profiles:
            lines.append(f"  {profile.name}: {', '.join(profile.columns)}")
    return lines


def _gather(pm: pluggy.PluginManager) -> list[tuple[str, Profile]]:
    """(plugin name, profile) for every registered profile, validated and checked."""
    gathered: list[tuple[str, Profile]] = []
    owners: dict[str, str] = {}
    for plugin, result in _results(pm, "register_profiles"):
        if isinstance(result, Profile | str | bytes | Mapping):
            raise PluginError(
                f"plugin {plugin!r}: register_profiles must return an iterable of Profile, "
                f"not {type(result).__name__}"
            )
        for profile in _iterate(plugin, "register_profiles", result):
            if not isinstance(profile, Profile):
                raise PluginError(
                    f"plugin {plugin!r}: register_profiles returned a "
                    f"{type(profile).__name__}, not a quartsig.plugins.profiles.Profile"
                )
            if profile.name in owners:
                raise PluginError(
                    f"profile {profile.name!r} is registered twice: "
                    f"by plugin {owners[profile.name]!r} and by plugin {plugin!r}"
                )
            check_profile(plugin, profile)
            gathered.append((plugin, profile))
            owners[profile.name] = plugin
    return gathered


def load_screeners(pm: pluggy.PluginManager, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (the built-in exchange -> screener table) updated with every plugin's entries.

    Exchange prefixes are upper-cased, matching how symbols are normalised, so a plugin
    writing ``"moex"`` still matches ``MOEX:SBER``.
    """
    screeners = {exchange.upper(): screener for exchange, screener in base.items()}
    for plugin, result in _results(pm, "register_screeners"):
        if not isinstance(result, Mapping):
            raise PluginError(
                f"plugin {plugin!r}: register_screeners must return a mapping, "
                f"not {type(result).__name__}"
            )
        for exchange, screener in result.items():
            if not (isinstance(exchange, str) and exchange and isinstance(screener, str)):
                raise PluginError(
                    f"plugin {plugin!r}: register_screeners entry {exchange!r}: {screener!r} "
                    "must map a non-empty exchange string to a screener string"
                )
            if not screener:
                raise PluginError(f"plugin {plugin!r}: empty screener for {exchange!r}")
            screeners[exchange.upper()] = screener
    return screeners


def _results(pm: pluggy.PluginManager, hook_name: str) -> Iterable[tuple[str, Any]]:
    """Call each implementation of a no-argument hook, yielding (plugin name, result).

    Wrappers are skipped: they exist to wrap a call, and these hooks are gathered, not called.
    An implementation returning ``None`` contributes nothing, as in a normal pluggy call.
    """
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        if impl.hookwrapper or impl.wrapper:
            continue
        try:
            result = impl.function()
        except Exception as error:
            raise PluginError(
                f"plugin {impl.plugin_name!r}: {hook_name} raised {type(error).__name__}: {error}"
            ) from error
        if result is not None:
            yield impl.plugin_name, result


def _iterate(plugin: str, hook_name: str, result: object) -> list[object]:
    """Materialise a hook's iterable result, blaming the plugin if it is not iterable."""
    try:
        return list(result)  # type: ignore[call-overload,no-any-return]
    except Exception as error:
        raise PluginError(
            f"plugin {plugin!r}: {hook_name} must return an iterable, "
            f"not {type(result).__name__} ({error})"
        ) from error


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as error:
        raise PluginError(
            f"plugin {name!r} failed to load: {type(error).__name__}: {error}"
        ) from error


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Load the ``quartsig`` entry points one at a time, so a failure can name its plugin.

    Each goes through pluggy's own loader (``name=`` selects one), which keeps the
    distribution info available via ``pm.list_plugin_distinfo()``.
    """
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=entry_point.name)
        except Exception as error:
            raise PluginError(
                f"plugin {entry_point.name!r} ({entry_point.value}) failed to load: "
                f"{type(error).__name__}: {error}"
            ) from error


def _load_file(path: Path) -> ModuleType:
    """Import one plugin file as ``quartsig_plugins.<stem>``.

    The module goes into ``sys.modules`` before it runs, as a normal import would, so
    dataclasses and pickling inside the plugin work; it is removed again if it fails.
    """
    module_name = f"{DIRECTORY_PACKAGE}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {str(path)!r} failed to load: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as error:
        sys.modules.pop(module_name, None)
        if not isinstance(error, Exception):
            raise
        raise PluginError(
            f"plugin {str(path)!r} failed to load: {type(error).__name__}: {error}"
        ) from error
    return module


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None) -> None:
    try:
        pm.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as error:
        lines = str(error).splitlines()
        # pluggy's name-clash ValueError appends the whole registry; its first line is enough.
        reason = lines[0] if isinstance(error, ValueError) else "; ".join(lines)
        shown = name or pm.get_canonical_name(plugin)
        raise PluginError(f"plugin {shown!r} cannot be registered: {reason}") from error


def _extra_name(pm: pluggy.PluginManager, plugin: object) -> str:
    """A readable name for a plugin object: pluggy's default for an instance is its id().

    Errors quote this name, so a class name beats a number; a second instance of the
    same class gets ``#2`` rather than a clash.
    """
    base = getattr(plugin, "__name__", None) or type(plugin).__name__
    name, number = base, 1
    while pm.has_plugin(name):
        number += 1
        name = f"{base}#{number}"
    return name


def _name(pm: pluggy.PluginManager, plugin: object) -> str:
    return pm.get_name(plugin) or pm.get_canonical_name(plugin)
