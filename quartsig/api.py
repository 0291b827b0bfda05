"""HTTP for machines: the bot mints tokens here, the platform probes health here.

``POST /api/tokens`` exists only when ``QUARTSIG_BOT_SECRET`` is set (404
otherwise, so an unconfigured deployment exposes nothing). With
``"create": true`` the account is created if missing; without it an unknown
id is refused. Either way a disabled account is refused: creating never
re-enables, because disabling is how an operator revokes access.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, jsonify, request

from quartsig import __version__, accounts, database
from quartsig.runtime import current_state
from quartsig.tokens import InvalidTelegramId, IssuedToken, board_link, check_tg_id

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
    if not authorised(request.headers.get("Authorization"), secret):
        response, status = _error(401, "unauthorized", "a valid bearer secret is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response, status
    wanted = parse_token_request(await request.get_data())
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
    try:
        if state.database is None:
            raise database.DatabaseError("database is not started")
        await database.ping(state.database)
    except database.DatabaseError:
        body.update(status="error", database="unreachable")
        return jsonify(body), 503
    return jsonify(body), 200


@blueprint.get("/metrics")
async def metrics() -> Response:
    body = generate_latest(current_state().metrics.registry)
    return Response(body, content_type=CONTENT_TYPE_LATEST)
