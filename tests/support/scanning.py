"""Shared scanning fixtures: a running in-process stand-in, a real SOCKS5 proxy.

Fixtures cannot be shared through ``pytest_plugins`` outside the root
conftest, so test modules import what they use, explicitly::

    from tests.support.scanning import standin_fixture  # noqa: F401

and then ask for ``standin``. The plain async context managers
(:func:`running_standin`, :func:`running_microsocks`) serve tests that need
several, or need options.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from tests.support.net import free_port, wait_listening
from tests.support.standin import STANDIN, Standin, serve_standin

MICROSOCKS = shutil.which("microsocks")

needs_microsocks = pytest.mark.skipif(MICROSOCKS is None, reason="microsocks is not installed")


@dataclass
class RunningStandin:
    """A stand-in serving on 127.0.0.1: its URL and its in-process state."""

    url: str
    runner: web.AppRunner

    @property
    def state(self) -> Standin:
        return self.runner.app[STANDIN]


@contextlib.asynccontextmanager
async def running_standin(**options: Any) -> AsyncIterator[RunningStandin]:
    """A stand-in on a free port for the block; ``options`` go to ``create_standin_app``."""
    runner, url = await serve_standin("127.0.0.1", 0, **options)
    try:
        yield RunningStandin(url, runner)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(name="standin")
async def standin_fixture() -> AsyncIterator[RunningStandin]:
    async with running_standin() as server:
        yield server


@dataclass
class Microsocks:
    """A real ``microsocks`` process. ``bind`` is the address its outgoing connections use,
    so the stand-in's request log (``peer``) shows which proxy carried each request."""

    port: int
    bind: str
    user: str | None = None
    password: str | None = None
    process: asyncio.subprocess.Process | None = None
    output: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"socks5://{auth}127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        assert MICROSOCKS is not None
        args = [MICROSOCKS, "-i", "127.0.0.1", "-p", str(self.port), "-b", self.bind]
        if self.user:
            args += ["-u", self.user, "-P", self.password or ""]
        self.process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await wait_listening(self.port, within=5.0)

    async def stop(self) -> None:
        """Kill the process (as a crash would) and wait for it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader
            self._reader = None

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.output.append(line.decode(errors="replace").rstrip())


@contextlib.asynccontextmanager
async def running_microsocks(
    bind: str = "127.0.0.2", *, user: str | None = None, password: str | None = None
) -> AsyncIterator[Microsocks]:
    """A microsocks proxy on a free port for the block, killed afterwards."""
    proxy = Microsocks(free_port(), bind, user, password)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest_asyncio.fixture(name="microsocks")
async def microsocks_fixture() -> AsyncIterator[Microsocks]:
    if MICROSOCKS is None:
        pytest.skip("microsocks is not installed")
    async with running_microsocks() as proxy:
        yield proxy
