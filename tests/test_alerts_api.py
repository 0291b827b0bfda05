"""The alerts' HTTP API through Quart's test app (real lifespan, real SQLite), and the whole
path it starts: a rule made here fires on a publication and reaches a real webhook receiver,
and the history says it was delivered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from quart import Quart

from quartsig.access import accounts
from quartsig.app import create_app, state_of
from quartsig.config import Settings
from quartsig.domain.model import Batch, Key
from tests.support.webhooks import receiver

KEY = Fernet.generate_key().decode()
USER = 4004
EURUSD = Key("summary", "FX_IDC:EURUSD", "1h")
SPEC: dict[str, Any] = {"keys": [list(EURUSD)],
                        "condition": {"kind": "label", "to": ["BUY", "STRONG_BUY"]}}
WAIT = 30.0


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Quart]:
    settings = Settings.from_env({}, data_dir=tmp_path / "data", secret_keys=(KEY,),
                                 interval=3600.0, alerts_max_rules=3)
    app = create_app(settings)
    async with app.test_app():
        await accounts.add(USER)
        yield app


def _auth(app: Quart, user: int = USER) -> dict[str, str]:
    return {"Authorization": f"Bearer {state_of(app).tokens.issue(user).token}"}


async def _call(app: Quart, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
    client = app.test_client()
    response = await client.open(path, method=method, json=body,
                                 headers=_auth(app) if headers is None else headers)
    return response.status_code, await response.get_json()


async def test_rules_are_created_listed_muted_and_deleted(app: Quart) -> None:
    status, rule = await _call(app, "POST", "/api/alerts", SPEC)
    assert status == 201 and rule["version"] == 1 and rule["keys"] == [list(EURUSD)]
    status, changed = await _call(app, "PATCH", f"/api/alerts/{rule['id']}", {"muted": True})
    assert status == 200 and changed["muted"] is True
    status, listed = await _call(app, "GET", "/api/alerts")
    assert [r["id"] for r in listed["rules"]] == [rule["id"]] and listed["channels"] == []
    assert (await _call(app, "DELETE", f"/api/alerts/{rule['id']}"))[0] == 204
    assert await _call(app, "DELETE", f"/api/alerts/{rule['id']}") == (404, {
        "error": "unknown_rule", "message": f"alert rule {rule['id']} does not exist"})


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("POST", "/api/alerts", {**SPEC, "frequency": "hourly"}, 400, "invalid_rule"),
    ("POST", "/api/alerts", [1], 400, "invalid_json"),
    ("POST", "/api/alerts", {**SPEC, "keys": [["nope", "FX_IDC:EURUSD", "1h"]]}, 400,
     "invalid_rule"),
    ("POST", "/api/alerts", {**SPEC, "keys": [["summary", "NOWHERE:X", "1h"]]}, 400,
     "invalid_rule"),
    ("POST", "/api/alerts", {**SPEC, "condition": {"kind": "cross", "output": "RSI",
                                                   "direction": "below", "level": 30}}, 400,
     "invalid_rule"),
    ("PATCH", "/api/alerts/1", {"colour": 1}, 400, "invalid_rule"),
    ("PATCH", "/api/alerts/999", {"muted": True}, 404, "unknown_rule"),
    ("POST", "/api/alerts/channels", {"kind": "pigeon"}, 400, "unknown_channel_kind"),
    ("POST", "/api/alerts/channels", {"kind": "webhook", "url": "ftp://x"}, 400, "invalid_url"),
    ("GET", "/api/alerts/history?limit=0", None, 400, "invalid_limit"),
    ("DELETE", "/api/alerts/channels/77", None, 404, "unknown_channel"),
])
async def test_refusals_carry_their_code(app: Quart, method: str, path: str, body: Any,
                                         status: int, code: str) -> None:
    got_status, got = await _call(app, method, path, body)
    assert (got_status, got["error"]) == (status, code)


async def test_keys_are_named_as_the_server_names_them(app: Quart) -> None:
    status, rule = await _call(app, "POST", "/api/alerts",
                               {**SPEC, "keys": [["summary", "eurusd", "1h"]]})
    assert status == 201 and rule["keys"] == [["summary", "FX_IDC:EURUSD", "1h"]]


async def test_an_output_the_profile_has_is_accepted(app: Quart) -> None:
    spec = {"keys": [["full", "FX_IDC:EURUSD", "1h"]],
            "condition": {"kind": "cross", "output": "RSI", "direction": "below", "level": 30}}
    assert (await _call(app, "POST", "/api/alerts", spec))[0] == 201


async def test_the_per_account_limit(app: Quart) -> None:
    for _ in range(3):
        assert (await _call(app, "POST", "/api/alerts", SPEC))[0] == 201
    status, body = await _call(app, "POST", "/api/alerts", SPEC)
    assert (status, body["error"]) == (409, "alert_limit")


async def test_only_the_tokens_owner_is_served(app: Quart) -> None:
    _, rule = await _call(app, "POST", "/api/alerts", SPEC)
    assert (await _call(app, "GET", "/api/alerts", headers={}))[0] == 401
    assert (await _call(app, "GET", "/api/alerts",
                        headers={"Authorization": "Bearer nonsense"}))[0] == 401
    await accounts.add(USER + 1)
    other = _auth(app, USER + 1)
    assert (await _call(app, "GET", "/api/alerts", headers=other))[1]["rules"] == []
    assert (await _call(app, "DELETE", f"/api/alerts/{rule['id']}", headers=other))[0] == 404
    await accounts.disable(USER + 1)
    assert (await _call(app, "GET", "/api/alerts", headers=other))[0] == 403


async def test_a_rule_made_here_fires_is_delivered_and_shows_in_the_history(
        app: Quart) -> None:
    state = state_of(app)
    assert state.alerts is not None and state.deliverer is not None
    async with receiver("whsec_") as hook:
        status, channel = await _call(app, "POST", "/api/alerts/channels",
                                      {"kind": "webhook", "url": hook.url("/mine")})
        assert status == 201 and channel["secret"].startswith("whsec_")
        hook.secret = channel["secret"]  # shown once: the receiver keeps it
        state.alerts.loaded.clear()
        status, rule = await _call(app, "POST", "/api/alerts", SPEC)
        async with asyncio.timeout(WAIT):
            await state.alerts.loaded.wait()
        assert rule["id"] in state.alerts.evaluator
        for rating in (0.0, 0.3):  # NEUTRAL, then BUY: what the collector would publish
            state.alerts.on_published(
                Batch(values=[(EURUSD, {"Recommend.All": rating, "rec.all":
                                        "NEUTRAL" if rating < 0.1 else "BUY"}, 1_000)]), 0)
        async with asyncio.timeout(WAIT):
            while not hook.valid("/mine"):
                hook.arrived.clear()
                await hook.arrived.wait()
        [got] = hook.valid("/mine")
        assert (got.body["from"], got.body["to"], got.body["rule"]) == (
            "NEUTRAL", "BUY", rule["id"])
        async with asyncio.timeout(WAIT):
            while state.deliverer.sent < 1:  # marked just after the receiver answered
                state.deliverer.marked.clear()
                await state.deliverer.marked.wait()
        status, history = await _call(app, "GET", "/api/alerts/history")
        assert history["triggers"][0]["deliveries"][0]["status"] == "sent"
        [trigger] = history["triggers"]
        assert (trigger["before"], trigger["after"], trigger["term"]) == ("NEUTRAL", "BUY", 0)


# -- the same over the WebSocket ------------------------------------------------------------


async def _ws_exchange(ws: Any, message: dict[str, Any]) -> dict[str, Any]:
    """Send one op; its answer (the frame carrying its id)."""
    await ws.send(orjson.dumps(message).decode())
    async with asyncio.timeout(WAIT):
        while True:
            frame = orjson.loads(await ws.receive())
            for item in frame if isinstance(frame, list) else [frame]:
                if item.get("id") == message["id"]:
                    return dict(item)


async def test_rule_operations_over_the_websocket(app: Quart) -> None:
    token = state_of(app).tokens.issue(USER).token
    async with app.test_client().websocket("/ws") as ws:
        authed = await _ws_exchange(ws, {"op": "auth", "token": token, "id": "a"})
        assert authed["type"] == "authed"
        made = await _ws_exchange(ws, {"op": "alert.create", "id": 1, "rule": SPEC})
        assert made["type"] == "alert" and made["rule"]["keys"] == [list(EURUSD)]
        rule_id = made["rule"]["id"]
        muted = await _ws_exchange(ws, {"op": "alert.update", "id": 2, "rule_id": rule_id,
                                        "muted": True})
        assert muted["rule"]["muted"] is True
        listed = await _ws_exchange(ws, {"op": "alert.list", "id": 3})
        assert [r["id"] for r in listed["rules"]] == [rule_id]
        assert (await _ws_exchange(ws, {"op": "alert.history", "id": 4}))["triggers"] == []
        bad = await _ws_exchange(ws, {"op": "alert.create", "id": 5,
                                      "rule": {**SPEC, "cooldown": -1}})
        assert (bad["type"], bad["code"]) == ("error", "invalid_rule")
        assert bad["message"].startswith("cooldown:")
        gone = await _ws_exchange(ws, {"op": "alert.delete", "id": 6, "rule_id": rule_id})
        assert gone == {"type": "alert_deleted", "rule_id": rule_id, "id": 6}
        again = await _ws_exchange(ws, {"op": "alert.delete", "id": 7, "rule_id": rule_id})
        assert again["code"] == "unknown_rule"
        # the subscription protocol still answers around them
        assert (await _ws_exchange(ws, {"op": "ping", "id": 8}))["type"] == "pong"
