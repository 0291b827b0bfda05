"""POST /api/tokens and GET /healthz through Quart's test app (real lifespan, real SQLite)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from quart import Quart
from quart.testing.app import LifespanError
from tortoise.context import TortoiseContext

from quartsig.access import accounts, database
from quartsig.app import MAX_HTTP_BODY, create_app, state_of
from quartsig.config import Settings
from quartsig.state import State
from quartsig.web import api
from quartsig.web.api import authorised, parse_token_request

SECRET = "bot-secret_0123456789+/=-long-enough"
KEY = Fernet.generate_key().decode()
AUTH = {"Authorization": f"Bearer {SECRET}"}


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "secret_keys": (KEY,),
        "bot_secret": SECRET,
    }
    values.update(changes)
    return Settings.from_env({}, **values)


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., Quart]:
    return lambda **changes: create_app(_settings(tmp_path, **changes))


@pytest.fixture
async def app(make_app: Callable[..., Quart]) -> AsyncIterator[Quart]:
    app = make_app()
    async with app.test_app():
        yield app


async def _post(app: Quart, body: Any = None, headers: dict[str, str] | None = None,
                data: bytes | None = None) -> tuple[int, dict[str, Any]]:
    client = app.test_client()
    if data is None:
        response = await client.post("/api/tokens", json=body, headers=headers or AUTH)
    else:
        response = await client.post("/api/tokens", data=data, headers=headers or AUTH)
    return response.status_code, await response.get_json()


async def test_mints_a_token_for_an_active_account(app: Quart) -> None:
    await accounts.add(42)
    status, body = await _post(app, {"tg_id": 42})
    assert status == 200
    assert set(body) == {"token", "expires_at", "tg_id"}
    assert body["tg_id"] == 42
    assert Fernet(KEY.encode()).decrypt(body["token"]) == b"42"
    assert body["expires_at"].endswith("Z")
    expires = datetime.fromisoformat(body["expires_at"])
    issued = Fernet(KEY.encode()).extract_timestamp(body["token"])
    assert expires == datetime.fromtimestamp(issued + 86400, UTC)
    assert state_of(app).tokens.verify(body["token"]) == 42


async def test_create_true_creates_then_keeps_the_account(app: Quart) -> None:
    status, _ = await _post(app, {"tg_id": 77})
    assert status == 404
    for _ in range(2):
        status, body = await _post(app, {"tg_id": 77, "create": True})
        assert status == 200, body
    assert [a.tg_id for a in await accounts.list_accounts()] == [77]


async def test_unknown_and_disabled_accounts_are_refused(app: Quart) -> None:
    status, body = await _post(app, {"tg_id": 5})
    assert (status, body["error"]) == (404, "unknown_account")
    await accounts.add(6)
    await accounts.disable(6)
    for create in (False, True):  # creating never re-enables a revoked account
        status, body = await _post(app, {"tg_id": 6, "create": create})
        assert (status, body["error"]) == (403, "disabled_account")
        assert "token" not in body


async def test_board_link_when_base_url_is_set(make_app: Callable[..., Quart]) -> None:
    app = make_app(base_url="https://board.example.com/")
    async with app.test_app():
        status, body = await _post(app, {"tg_id": 9, "create": True})
    assert status == 200
    assert body["url"] == f"https://board.example.com/#token={body['token']}"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": SECRET},
    ],
    ids=["missing", "wrong", "scheme", "longer", "bare"],
)
async def test_wrong_or_missing_secret_is_401(app: Quart, headers: dict[str, str]) -> None:
    await accounts.add(42)
    client = app.test_client()
    response = await client.post("/api/tokens", json={"tg_id": 42}, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await response.get_json())["error"] == "unauthorized"


async def test_route_is_off_without_a_bot_secret(make_app: Callable[..., Quart]) -> None:
    app = make_app(bot_secret=None)
    async with app.test_app():
        await accounts.add(42)
        for headers in (AUTH, {"Authorization": "Bearer "}, {}):
            status, body = await _post(app, {"tg_id": 42}, headers=headers)
            assert status == 404
            assert "token" not in body


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[42]", "invalid_json"),
        (b"42", "invalid_json"),
        (b"{}", "missing_tg_id"),
        (b'{"tg_id": "42"}', "invalid_tg_id"),
        (b'{"tg_id": 4.2}', "invalid_tg_id"),
        (b'{"tg_id": true}', "invalid_tg_id"),
        (b'{"tg_id": 0}', "invalid_tg_id"),
        (b'{"tg_id": 9223372036854775808}', "invalid_tg_id"),
        (b'{"tg_id": 42, "create": "yes"}', "invalid_create"),
        (b'{"tg_id": 42, "admin": true}', "unknown_field"),
    ],
)
async def test_malformed_bodies_are_400(app: Quart, data: bytes, error: str) -> None:
    status, body = await _post(app, data=data, headers={**AUTH, "Content-Type": "application/json"})
    assert (status, body["error"]) == (400, error)
    assert body["message"]
    assert await accounts.list_accounts() == []


async def test_oversized_body_is_413(app: Quart) -> None:
    data = b'{"tg_id": 42, "pad": "' + b"x" * MAX_HTTP_BODY + b'"}'
    status, body = await _post(app, data=data)
    assert (status, body["error"]) == (413, "too_large")


async def test_healthz_reports_process_and_database(app: Quart) -> None:
    response = await app.test_client().get("/healthz")
    assert response.status_code == 200
    body = await response.get_json()
    assert (body["status"], body["database"]) == ("ok", "ok")
    assert body["uptime"] >= 0


async def test_healthz_is_503_when_the_database_stops_answering(app: Quart) -> None:
    state = state_of(app)
    live = state.database
    unreachable = TortoiseContext()
    with unreachable:  # configured but never connected: the first query has to connect
        await unreachable.init(config=database.tortoise_config("postgres://postgres@127.0.0.1:1/x"))
    state.database = unreachable
    try:
        response = await app.test_client().get("/healthz")
        assert response.status_code == 503
        assert (await response.get_json())["database"] == "unreachable"
    finally:
        state.database = live
        await unreachable.close_connections()
    assert (await app.test_client().get("/healthz")).status_code == 200


async def test_start_fails_cleanly_when_the_database_is_unreachable(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, database_url="postgres://postgres:pw@127.0.0.1:1/x"))
    with pytest.raises(LifespanError, match=r"postgres://postgres:\*\*\*@127\.0\.0\.1:1/x"):
        async with app.test_app():
            pass


class Recorder:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def start(self, state: State) -> None:
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    async def stop(self, state: State) -> None:
        self.log.append(f"stop {self.name}")


async def test_components_start_in_order_and_stop_in_reverse(tmp_path: Path) -> None:
    log: list[str] = []
    app = create_app(_settings(tmp_path), components=[Recorder("a", log), Recorder("b", log)])
    async with app.test_app():
        assert log == ["start a", "start b"]
    assert log == ["start a", "start b", "stop b", "stop a"]


async def test_a_failed_start_stops_what_already_started(tmp_path: Path) -> None:
    log: list[str] = []
    parts = [Recorder("a", log), Recorder("b", log, fail=True), Recorder("c", log)]
    app = create_app(_settings(tmp_path), components=parts)
    with pytest.raises(LifespanError, match="b cannot start"):
        async with app.test_app():
            pass
    assert log == ["start a", "stop a"]


def test_parse_token_request_defaults() -> None:
    assert parse_token_request(b'{"tg_id": 1}').create is False
    assert parse_token_request(b'{"tg_id": 1, "create": true}').create is True


def test_authorised_requires_the_exact_secret() -> None:
    assert authorised(f"Bearer {SECRET}", SECRET)
    assert authorised(f"bearer {SECRET}", SECRET)
    assert not authorised(None, SECRET)
    assert not authorised("Bearer", SECRET)
    assert not authorised(f"Bearer {SECRET[:-1]}", SECRET)


# -- issue 14, finding 7: repeated 401s are slowed per address and logged sparsely -------


def test_auth_failures_allow_a_burst_per_address_then_say_when_to_retry() -> None:
    now = [0.0]
    failures = api.AuthFailures(burst=3, per=10.0, capacity=100, clock=lambda: now[0])
    assert [failures.retry_after("a") for _ in range(1)] == [None]
    for _ in range(3):
        failures.failed("a")
    assert failures.retry_after("a") == 10
    assert failures.retry_after("b") is None  # another address is not held back
    now[0] += 9.5
    assert failures.retry_after("a") == 1  # whole seconds, rounded up
    now[0] += 0.5
    assert failures.retry_after("a") is None  # one more try earned back
    failures.failed("a")
    assert failures.retry_after("a") == 10


def test_auth_failures_hold_a_bounded_number_of_addresses() -> None:
    failures = api.AuthFailures(burst=1, per=60.0, capacity=50, clock=lambda: 0.0)
    for number in range(10_000):
        failures.failed(f"10.0.{number // 256}.{number % 256}")
    assert len(failures) == 50
    assert failures.retry_after("10.0.39.15") is not None  # the newest are kept


async def test_repeated_401s_get_429_with_retry_after_and_are_logged_sparsely(
    app: Quart, caplog: pytest.LogCaptureFixture,
) -> None:
    app.extensions[api.AUTH_FAILURES] = api.AuthFailures(burst=5, per=30.0, clock=lambda: 0.0)
    await accounts.add(42)
    client = app.test_client()
    wrong = {"Authorization": "Bearer wrong"}
    statuses = []
    with caplog.at_level(logging.WARNING, logger="quartsig.web.api"):
        for _ in range(20):
            response = await client.post("/api/tokens", json={"tg_id": 42}, headers=wrong)
            statuses.append(response.status_code)
    assert statuses == [401] * 5 + [429] * 15
    assert response.headers["Retry-After"] == "30"
    assert (await response.get_json())["error"] == "too_many_failures"
    refusals = [r for r in caplog.records if r.name == "quartsig.web.api"]
    assert len(refusals) == 1 and "bad bot secret" in refusals[0].getMessage()
    # Over its budget an address is refused before the secret is even compared.
    assert (await client.post("/api/tokens", json={"tg_id": 42}, headers=AUTH)).status_code == 429
    other = await client.post("/api/tokens", json={"tg_id": 42}, headers=AUTH,
                              scope_base={"client": ("192.0.2.7", 1234)})
    assert other.status_code == 200


# -- issue 20, point 5: the failure limiter counts clients as the connection caps do ----------


async def test_the_failure_limiter_sees_clients_through_trusted_proxies_and_ipv6_by_64(
    make_app: Callable[..., Quart],
) -> None:
    """It keyed on the peer: behind a router every client was one address, so one attacker
    kept the bot at 429; and each /128 of a /64 had a budget of its own."""
    from quartsig.domain.addresses import parse_networks

    app = make_app(trusted_proxies=parse_networks("10.0.0.1"))
    async with app.test_app():
        app.extensions[api.AUTH_FAILURES] = api.AuthFailures(burst=2, per=30.0,
                                                             clock=lambda: 0.0)
        await accounts.add(42)
        client = app.test_client()
        router = {"client": ("10.0.0.1", 1234)}

        async def post(behind: str, secret: dict[str, str]) -> int:
            response = await client.post(
                "/api/tokens", json={"tg_id": 42}, scope_base=router,
                headers={**secret, "X-Forwarded-For": behind})
            return response.status_code

        wrong = {"Authorization": "Bearer wrong"}
        attacker, bot = "2001:db8:1:2::66", "198.51.100.9"
        assert [await post(attacker, wrong) for _ in range(3)] == [401, 401, 429]
        assert await post(bot, AUTH) == 200  # the bot behind the same router is not held back
        assert await post("2001:db8:1:2:ffff::1", AUTH) == 429  # same /64: same budget
        assert await post("2001:db8:1:3::1", AUTH) == 200  # the next /64 is someone else
