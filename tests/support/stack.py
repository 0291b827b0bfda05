"""A real server stack: the stand-in scanner and ``quartsig serve`` as subprocesses.

:func:`server_stack` starts both (fast ticks), wires the server to the stand-in, and by
default adds account :data:`TG_ID` and mints its token through the CLI; the test
modules' ``stack`` fixtures and ``tests/test_e2e.py``'s ``launch`` build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import http_json
from tests.support.processes import QuartsigServer, Standin, quartsig_cli, quartsig_env

TG_ID = 42


@dataclass
class Stack:
    """One stand-in (or none: ``--demo``, a dead scanner) and one ``quartsig serve``."""

    standin: Standin | None
    server: QuartsigServer
    env: dict[str, str]
    tokens: dict[int, str] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"

    @property
    def stand(self) -> Standin:
        assert self.standin is not None, "this stack runs without a stand-in"
        return self.standin

    @property
    def token(self) -> str:
        """The token of account :data:`TG_ID`, minted when the stack started."""
        return self.tokens[TG_ID]

    def mint(self, tg_id: int = TG_ID) -> str:
        """A token for ``tg_id`` (blocking): through the bot API, creating the account, when
        the server has a bot secret; through the CLI otherwise."""
        if tg_id not in self.tokens:
            secret = self.env.get("QUARTSIG_BOT_SECRET")
            if secret:
                status, body = _post_json(f"{self.server.url}/api/tokens",
                                          {"tg_id": tg_id, "create": True}, secret)
                assert status == 200, (status, body)
                self.tokens[tg_id] = json.loads(body)["token"]
            else:
                with contextlib.suppress(AssertionError):  # it may exist already
                    quartsig_cli(self.env, "account", "add", str(tg_id))
                self.tokens[tg_id] = quartsig_cli(self.env, "token", "issue", str(tg_id)).strip()
        return self.tokens[tg_id]

    async def token_for(self, tg_id: int = TG_ID) -> str:
        """:meth:`mint` off the event loop."""
        if tg_id in self.tokens:
            return self.tokens[tg_id]
        return await asyncio.to_thread(self.mint, tg_id)

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` as {series: value}, off the event loop."""
        return await asyncio.to_thread(self.server.metrics)

    async def metric(self, name: str) -> float:
        return (await self.metrics()).get(name, 0.0)

    async def standin_config(self, **changes: Any) -> Any:
        return await asyncio.to_thread(
            http_json, "POST", f"{self.stand.url}/_standin/config", changes)


def _post_json(url: str, body: Any, bearer: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextlib.contextmanager
def server_stack(
    log_dir: Path, *serve_args: str, standin_args: tuple[str, ...] = (), standin: bool = True,
    account: int | None = TG_ID, **extra: str,
) -> Iterator[Stack]:
    """Stand-in (unless ``standin`` is false) + ``quartsig serve SERVE_ARGS`` with fast ticks
    and the ``QUARTSIG_*`` variables in ``extra``; ``account``: created, with a token, first."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        running = stack.enter_context(Standin.start(log_dir, *standin_args)) if standin else None
        env = quartsig_env(log_dir / "data", running.url if running else "http://127.0.0.1:9",
                           **extra)
        if running is None:
            env.pop("QUARTSIG_SCANNER_URL")
        tokens = {}
        if account is not None:
            quartsig_cli(env, "account", "add", str(account))
            tokens[account] = quartsig_cli(env, "token", "issue", str(account)).strip()
        server = stack.enter_context(QuartsigServer.start(env, log_dir, *serve_args))
        yield Stack(running, server, env, tokens)
