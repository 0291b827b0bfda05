"""Done-when for issue 13: a broken profile hurts only its own subscribers, on a real server.

A quartsig app (Quart's test app, the real collector, scanner client, hub and connections)
in front of the stand-in scanner, which refuses unknown columns with TradingView's 400. Three
clients watch one symbol: one on the broken profile, one on ``summary``, one on ``full``. Each
tick moves the market; the two healthy clients must get that tick's update, never a status but
``ok``, and the broken profile's client must get ``profile_failed``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from quartsig.testing import Client, LiveServer, live_server

SYMBOL, TF = "FX_IDC:EURUSD", "1h"
TICKS = 3

UNKNOWN_COLUMN = '''
from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.profiles import Profile
from quartsig.domain.rules import numbers

COLUMNS = ("RSI", "RSI[1]", "Stoch.K", "Not.A.Column")


def compute(row):
    return numbers(row, COLUMNS)


@hookimpl
def register_profiles():
    return [Profile(name="momentum", description="asks for a column TradingView lacks",
                    columns=COLUMNS, compute=compute)]
'''

RAISING_COMPUTE = '''
from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.profiles import Profile


def compute(row):
    if row.get("RSI") is not None:  # fine on the start-up row of nulls, broken on real data
        raise ValueError("the author forgot something")
    return {"rsi": None}


@hookimpl
def register_profiles():
    return [Profile(name="momentum", description="raises on real rows", columns=("RSI",),
                    compute=compute)]
'''


async def _until_update(client: Client, profile: str) -> tuple[dict[str, Any], list[dict]]:
    """The next update of ``profile``, and every other message read on the way."""
    seen: list[dict[str, Any]] = []
    while True:
        for message in await client.receive(within=20.0):
            if message["type"] == "update" and message["profile"] == profile:
                return message, seen
            seen.append(message)


@pytest.mark.parametrize(
    ("plugin", "quarantine", "told"),
    [
        (UNKNOWN_COLUMN, 0.001, "TradingView refused column Not.A.Column"),
        (RAISING_COMPUTE, 600.0, "compute raised ValueError: the author forgot something"),
    ],
    ids=["unknown-column", "raising-compute"],
)
async def test_a_broken_profile_hurts_only_its_own_subscribers(
    tmp_path: Path, plugin: str, quarantine: float, told: str
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "momentum.py").write_text(textwrap.dedent(plugin))
    async with (
        live_server(plugins, data_dir=tmp_path / "data", plugin_quarantine=quarantine) as server,
        server.connect() as bad,
        server.connect() as summary,
        server.connect() as full,
    ):
        await _run(server, bad, summary, full, told)


async def _run(server: LiveServer, bad: Client, summary: Client, full: Client, told: str) -> None:
    first = await bad.subscribe(SYMBOL, TF, "momentum")
    error = first if first["type"] == "error" else await bad.receive_until("error", 20.0)
    assert (error["code"], error["profile"], error["symbol"]) == ("profile_failed", "momentum",
                                                                  SYMBOL)
    assert told in error["message"]
    states = {}
    for client, profile in ((summary, "summary"), (full, "full")):
        snapshot = await client.subscribe(SYMBOL, TF, profile)
        assert snapshot["type"] == "snapshot", snapshot
        states[profile] = dict(snapshot["data"])

    hub = server.state.hub
    for tick in range(1, TICKS + 1):
        rating = round(-0.6 + 0.3 * tick, 2)  # a new value every tick: summary must change
        server.standin.set_values(SYMBOL, TF, {"RSI": 20.0 + tick, "Recommend.All": rating})
        await server.tick()
        for client, profile in ((summary, "summary"), (full, "full")):
            update, others = await _until_update(client, profile)
            assert all(m["type"] != "status" for m in others), others  # never anything but ok
            states[profile].update(update["data"])
            assert states[profile]["Recommend.All"] == rating
            assert states[profile] == hub.entries[_key(hub, profile)].data
        assert states["full"]["RSI"] == 20.0 + tick
        assert hub.status[0] == "ok", hub.status

    metrics = server.state.metrics.registry
    kinds = {"bad_column"} if "column" in told else {"exception"}
    total = sum(metrics.get_sample_value("quartsig_profile_failures_total",
                                         {"profile": "momentum", "kind": kind}) or 0
                for kind in kinds)
    assert total >= TICKS  # charged on every tick, to the profile and no one else
    for profile in ("summary", "full"):
        for kind in ("bad_column", "exception", "bad_value", "slow"):
            assert not metrics.get_sample_value("quartsig_profile_failures_total",
                                                {"profile": profile, "kind": kind})
    response = await server.test_app.test_client().get("/metrics")
    assert 'quartsig_profile_failures_total{kind="' in (await response.get_data(as_text=True))


def _key(hub: Any, profile: str) -> Any:
    [key] = [key for key in hub.entries if key.profile == profile]
    return key
