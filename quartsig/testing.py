"""The plugin author's kit: rows to feed a profile, its contract, and a live server to try it on.

Shipped in the package so a plugin developed anywhere (a file in ``plugins/``, or a package of
its own) is tested the way quartsig tests its own profiles::

    from quartsig.testing import check_contract, edge_rows, live_server, rows_strategy

- :func:`edge_rows` builds scanner rows for a profile's columns: nulls, missing keys, NaN,
  infinities, huge and tiny numbers, zeros, strings and booleans where numbers belong.
- :func:`rows_strategy` is the same idea as a hypothesis strategy (hypothesis is imported only
  when it is called, so this module imports without it).
- :func:`check_contract` runs ``compute`` over rows and asserts the contract the collector
  enforces at run time: no raise, a flat dict of JSON scalars (finite numbers), the same keys
  for every row, and ``compute_values`` agreeing with ``compute``.
- :func:`live_server` starts the stand-in scanner and a real quartsig app with your plugins
  directory loaded; :meth:`LiveServer.connect` gives an authenticated WebSocket client.

Used as a pytest plugin (``pytest_plugins = ["quartsig.testing"]`` in your top-level
``conftest.py``) it also provides the ``quartsig_server`` fixture: ``async with
quartsig_server(plugins_dir) as server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from quartsig.plugins.guard import check_data
from quartsig.plugins.profiles import Profile

if TYPE_CHECKING:
    from quart import Quart

    from quartsig.demo.scanner import DemoScanner
    from quartsig.state import State

#: Values TradingView (or a misbehaving upstream) can put where a number belongs.
ODD_VALUES: tuple[Any, ...] = (
    None, float("nan"), float("inf"), float("-inf"), 0, 0.0, -0.0, 1e308, -1e308, 5e-324,
    2**63, 2**70, -1, 1, "junk", "", True, False,
)  # fmt: skip


def null_row(profile: Profile) -> dict[str, Any]:
    """Every column of ``profile`` null."""
    return dict.fromkeys(profile.columns)


def edge_rows(profile: Profile) -> Iterator[dict[str, Any]]:
    """Rows keyed by base column name for ``profile``'s columns, each one hard in its own way:
    all null, all missing, every :data:`ODD_VALUES` value in every column, each column alone
    odd among ordinary values, and rising and falling ladders (for rules comparing columns)."""
    columns = profile.columns
    yield null_row(profile)
    yield {}
    for value in ODD_VALUES:
        yield dict.fromkeys(columns, value)
    ordinary = {name: 1.0 + position for position, name in enumerate(columns)}
    yield dict(ordinary)
    yield {name: -value for name, value in ordinary.items()}
    yield {name: 1e300 / value for name, value in ordinary.items()}
    for name in columns:
        for value in (None, float("nan"), "junk", 1e308):
            yield {**ordinary, name: value}


def rows_strategy(profile: Profile) -> Any:
    """A hypothesis strategy of rows for ``profile``: any subset of its columns, each value
    null, any float (NaN and infinities included), any integer, a short string or a boolean."""
    from hypothesis import strategies as st

    value = st.one_of(
        st.none(), st.floats(), st.integers(), st.booleans(), st.text(max_size=4),
        st.floats(min_value=-1e6, max_value=1e6),
    )  # fmt: skip
    return st.fixed_dictionaries({}, optional=dict.fromkeys(profile.columns, value))


def check_contract(profile: Profile, rows: Iterable[Mapping[str, Any]] | None = None) -> None:
    """Assert ``profile``'s compute keeps its contract on every row (:func:`edge_rows` when
    ``rows`` is None): it does not raise, returns a flat dict of JSON scalars with finite
    numbers, always the same keys, and ``compute_values`` (if given) returns the same."""
    keys: tuple[str, ...] | None = None
    for row in edge_rows(profile) if rows is None else rows:
        row = dict(row)
        try:
            data = profile.compute(row)
        except Exception as error:
            raise AssertionError(
                f"profile {profile.name!r}: compute raised {type(error).__name__}: {error} "
                f"on {row!r}"
            ) from error
        problem = check_data(data)
        assert problem is None, f"profile {profile.name!r}: {problem} on {row!r}"
        orjson.dumps(data)  # what the server will do with it
        if keys is None:
            keys = tuple(sorted(data))
        assert tuple(sorted(data)) == keys, (
            f"profile {profile.name!r}: keys differ between rows: {sorted(set(data) ^ set(keys))}"
            f" on {row!r}"
        )
        if profile.compute_values is not None:
            values = [row.get(name) for name in profile.columns]
            other = profile.compute_values(values)
            assert _same(other, data), (
                f"profile {profile.name!r}: compute_values differs from compute on {row!r}"
            )


def _same(one: Mapping[str, Any], two: Mapping[str, Any]) -> bool:
    if one.keys() != two.keys():
        return False
    for name, value in one.items():
        other = two[name]
        if isinstance(value, float) and isinstance(other, float) and math.isnan(value):
            if not math.isnan(other):
                return False
        elif value != other or type(value) is not type(other):
            return False
    return True


# --- a live server ------------------------------------------------------------------------


@dataclass
class Client:
    """One authenticated WebSocket connection to a :class:`LiveServer`."""

    ws: Any

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def receive(self, within: float = 10.0) -> list[dict[str, Any]]:
        """The next frame's messages (a frame may carry a batch)."""
        async with asyncio.timeout(within):
            value = orjson.loads(await self.ws.receive())
        return value if isinstance(value, list) else [value]

    async def receive_until(self, type: str, within: float = 10.0) -> dict[str, Any]:
        """Messages are read (and dropped) until one of ``type`` arrives."""
        async with asyncio.timeout(within):
            while True:
                for message in await self.receive(within):
                    if message["type"] == type:
                        return message

    async def subscribe(
        self, symbol: str, tf: str, profile: str, within: float = 10.0
    ) -> dict[str, Any]:
        """Subscribe and return the first snapshot or error for that subscription."""
        await self.send({"op": "subscribe", "symbol": symbol, "tf": tf, "profile": profile})
        async with asyncio.timeout(within):
            while True:
                for message in await self.receive(within):
                    if message["type"] in ("snapshot", "error") and (
                        message.get("profile") == profile
                    ):
                        return message


@dataclass
class LiveServer:
    """A quartsig app serving (through Quart's test app) with a stand-in scanner behind it."""

    app: Quart
    test_app: Any
    standin: DemoScanner
    token: str

    @property
    def state(self) -> State:
        from quartsig.app import state_of

        return state_of(self.app)

    async def tick(self) -> None:
        """One full collector tick now (the server's own ticks are ``interval`` apart)."""
        collector = self.state.collector
        assert collector is not None
        await collector.tick(self.state.hub.demand(), full=True)

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Client]:
        """An authenticated client for the block."""
        async with self.test_app.test_client().websocket("/ws") as ws:
            client = Client(ws)
            await client.send({"op": "auth", "token": self.token})
            authed = await client.receive_until("authed")
            assert authed["type"] == "authed", authed
            yield client


@contextlib.asynccontextmanager
async def live_server(
    plugins_dir: Path | None = None,
    *,
    data_dir: Path,
    interval: float = 30.0,
    seed: int = 1,
    **settings: Any,
) -> AsyncIterator[LiveServer]:
    """The stand-in scanner and a quartsig app with ``plugins_dir`` loaded, for the block.

    ``data_dir`` holds the app's database (a temporary directory); ``interval`` is long by
    default so that a test drives ticks itself with :meth:`LiveServer.tick`; ``settings`` are
    further :class:`~quartsig.config.Settings` fields."""
    from cryptography.fernet import Fernet

    from quartsig.access import accounts
    from quartsig.app import create_app
    from quartsig.demo.scanner import SCANNER, serve_standin

    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    runner, url = await serve_standin("127.0.0.1", 0, seed=seed)
    try:
        app = create_app(
            data_dir=data_dir, scanner_url=url, interval=interval,
            secret_keys=(Fernet.generate_key().decode(),),
            plugins_dir=plugins_dir or data_dir / "no-plugins", **settings,
        )  # fmt: skip
        async with app.test_app() as test_app:
            await accounts.add(42)
            token = app.extensions["quartsig"].tokens.issue(42).token
            yield LiveServer(app, test_app, runner.app[SCANNER], token)
    finally:
        await runner.cleanup()


try:
    import pytest
except ImportError:  # pragma: no cover (pytest is a test extra)
    pass
else:

    @pytest.fixture
    def quartsig_server(tmp_path: Path) -> Any:
        """``async with quartsig_server(plugins_dir, **settings) as server``: a live server."""

        def start(plugins_dir: Path | None = None, **settings: Any) -> Any:
            return live_server(plugins_dir, data_dir=tmp_path / "quartsig", **settings)

        return start
