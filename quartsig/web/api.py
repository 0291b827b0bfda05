"""HTTP for machines: the bot mints tokens here, the platform probes health here.

``POST /api/tokens`` exists only when ``QUARTSIG_BOT_SECRET`` is set (404
otherwise, so an unconfigured deployment exposes nothing). With
``"create": true`` the account is created if missing; without it an unknown
id is refused. Either way a disabled account is refused: creating never
re-enables, because disabling is how an operator revokes access. Wrong secrets
are counted per client address: past a burst the address gets 429 with
``Retry-After`` (see :class:`AuthFailures`), and the refusals are logged sparsely.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, current_app, jsonify, request

from quartsig import __version__
from quartsig.access import accounts, database
from quartsig.access.tokens import InvalidTelegramId, IssuedToken, board_link, check_tg_id
from quartsig.domain import addresses
from quartsig.domain.ratelimit import TokenBucket
from quartsig.ops import health, logs
from quartsig.state import State, current_state

log = logging.getLogger(__name__)
blueprint = Blueprint("api", __name__)

_TOKEN_FIELDS = frozenset({"tg_id", "create"})


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class TokenRequest:
    tg_id: int
    create: bool = False


def parse_token_request(body: bytes) -> TokenRequest:
    """Validate the JSON body; every refusal names the field and what was expected."""
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "invalid_json", "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object")
    unknown = sorted(set(data) - _TOKEN_FIELDS)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
    if "tg_id" not in data:
        raise ApiError(400, "missing_tg_id", "tg_id is required")
    try:
        tg_id = check_tg_id(data["tg_id"])
    except InvalidTelegramId as error:
        raise ApiError(400, "invalid_tg_id", str(error)) from None
    create = data.get("create", False)
    if not isinstance(create, bool):
        raise ApiError(400, "invalid_create", "create must be true or false")
    return TokenRequest(tg_id=tg_id, create=create)


def authorised(header: str | None, secret: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <secret>``."""
    scheme, _, presented = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), secret.encode())


def token_response(issued: IssuedToken, tg_id: int, base_url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "token": issued.token,
        "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z"),
        "tg_id": tg_id,
    }
    if base_url:
        body["url"] = board_link(base_url, issued.token)
    return body


AUTH_FAILURES = "quartsig.web.api.auth_failures"
"""Where the app keeps its :class:`AuthFailures` (``app.extensions``)."""


class AuthFailures:
    """Wrong bot secrets per client address: ``burst`` at once, then one per ``per`` seconds.

    A token bucket per address that only failures draw from, so the bot, which never
    fails, is never slowed by its own requests. At most ``capacity`` addresses are kept
    (the least recently failed are forgotten first), so a spray from many addresses
    costs bounded memory. Over its budget an address is refused before the secret is
    compared: guessing gets no faster by ignoring the 429s.
    """

    def __init__(self, burst: int = 10, per: float = 6.0, capacity: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.per, self.capacity, self.clock = burst, per, capacity, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.sparse = logs.Sparse(clock=clock)

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or ``None`` if it may now."""
        bucket = self._buckets.get(address)
        return None if bucket is None else bucket.wait()

    def failed(self, address: str) -> None:
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(1 / self.per, self.burst, self.clock)
        bucket.drain()
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)


def _auth_failures() -> AuthFailures:
    failures = current_app.extensions.get(AUTH_FAILURES)
    if failures is None:
        failures = current_app.extensions[AUTH_FAILURES] = AuthFailures()
    return failures


def _client_group(state: State) -> str:
    """Who failed, as the connection caps count them: the client through trusted proxies,
    an IPv6 client by its /64. The peer alone was a router every client shared, so one
    attacker behind it kept the bot at 429; and each /128 of a /64 had its own budget."""
    client = addresses.client_of(request.remote_addr, request.headers.getlist("X-Forwarded-For"),
                                 state.settings.trusted_proxies)
    return client.group or "-"


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": code, "message": message}), status


@blueprint.errorhandler(ApiError)
async def _api_error(error: ApiError) -> tuple[Response, int]:
    return _error(error.status, error.code, error.message)


@blueprint.errorhandler(413)
async def _too_large(_: Exception) -> tuple[Response, int]:
    return _error(413, "too_large", "body is larger than this endpoint accepts")


@blueprint.post("/api/tokens")
async def issue_token() -> tuple[Response, int] | Response:
    state = current_state()
    secret = state.settings.bot_secret
    if not secret:
        return _error(404, "not_found", "not found")  # off: look like any unknown route
    failures, address = _auth_failures(), _client_group(state)
    if (wait := failures.retry_after(address)) is not None:
        response, status = _error(429, "too_many_failures", "too many wrong secrets; retry later")
        response.headers["Retry-After"] = str(wait)
        return response, status
    if not authorised(request.headers.get("Authorization"), secret):
        failures.failed(address)
        if (held := failures.sparse.due()) is not None:
            log.warning("refused a bad bot secret from %s (%d more since the last report)",
                        address, held)
        response, status = _error(401, "unauthorized", "a valid bearer secret is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response, status
    wanted = parse_token_request(await request.get_data(True, False, False))  # bytes
    if wanted.create:
        await accounts.add(wanted.tg_id)
    try:
        await accounts.require_active(wanted.tg_id)
    except accounts.UnknownAccount as error:
        return _error(404, "unknown_account", str(error))
    except accounts.DisabledAccount as error:
        return _error(403, "disabled_account", str(error))
    issued = state.tokens.issue(wanted.tg_id)
    response = jsonify(token_response(issued, wanted.tg_id, state.settings.base_url))
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/livez")
async def livez() -> tuple[Response, int]:
    """The event loop answers: nothing more (a restart is the only cure for a failure)."""
    return jsonify({"status": "ok"}), 200


@blueprint.get("/readyz")
async def readyz() -> tuple[Response, int]:
    """This node can serve fresh data (see :mod:`quartsig.ops.health`); not the database."""
    found = current_state().readiness()
    body: dict[str, Any] = {"status": "error" if found else "ok", **health.report(found)}
    return jsonify(body), 503 if found else 200


@blueprint.get("/healthz")
async def healthz() -> tuple[Response, int]:
    state = current_state()
    body: dict[str, Any] = {
        "status": "ok",
        "database": "ok",
        "version": __version__,
        "uptime": round(time.monotonic() - state.started_at, 3),
    }
    if state.broker is not None:
        body.update(state.broker.health())
    found = state.readiness()
    try:
        if state.database is None:
            raise database.DatabaseError("database is not started")
        await database.ping(state.database)
    except database.DatabaseError:
        body["database"] = "unreachable"
        found["database"] = "database unreachable"
    body.update(health.report(found, (*health.CHECKS, "database")))
    if found:
        body["status"] = "error"
        return jsonify(body), 503
    return jsonify(body), 200


@blueprint.get("/metrics")
async def metrics() -> Response:
    return Response(await current_state().scrape(), content_type=CONTENT_TYPE_LATEST)
