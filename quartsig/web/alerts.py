"""HTTP for scripts and the board: a user's alert rules, channels and history.

Authenticated by the user's own board token (``Authorization: Bearer <token>``, the token the
bot hands out), so a script acts as its user and nobody else. Every refusal is
``{"error": code, "message": ...}`` with one of the codes in docs/alerts.md. A change here
asks this node's recorder to reload the rules at once; the collecting node, if it is another,
sees it within ``QUARTSIG_ALERTS_RELOAD`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from quart import Blueprint, Response, jsonify, request

from quartsig.access import accounts
from quartsig.access.tokens import TokenError
from quartsig.alerts import storage
from quartsig.alerts.rules import Rule, RuleError
from quartsig.alerts.webhooks import new_secret
from quartsig.domain import protocol
from quartsig.domain.symbols import SymbolError, parse_symbol
from quartsig.fanout.connection import Connection
from quartsig.state import State, current_state

log = logging.getLogger(__name__)
blueprint = Blueprint("alerts", __name__)

MAX_HISTORY = 500
#: Channel kinds whose rows the bot makes (a Telegram chat is the account's own, from
#: ``/start``), never the API: a target typed here could not be a chat the user proved is theirs.
MADE_BY_THE_BOT = frozenset({"telegram"})


class AlertsApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@blueprint.errorhandler(AlertsApiError)
async def _refused(error: AlertsApiError) -> tuple[Response, int]:
    response = jsonify({"error": error.code, "message": error.message})
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response, error.status


def rule_json(rule: Rule) -> dict[str, Any]:
    return {"id": rule.id, "version": rule.version, "muted": rule.muted, **rule.spec()}


async def _user(state: State) -> int:
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AlertsApiError(401, "unauthorized", "a bearer token is required")
    try:
        tg_id = state.tokens.verify(token.strip())
    except TokenError as error:
        raise AlertsApiError(401, "unauthorized", str(error) or "invalid token") from None
    if not await accounts.is_active(tg_id):
        raise AlertsApiError(403, "disabled_account", "this account is disabled")
    return tg_id


async def _body() -> dict[str, Any]:
    try:
        data = json.loads(await request.get_data(as_text=False))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AlertsApiError(400, "invalid_json", "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise AlertsApiError(400, "invalid_json", "body must be a JSON object")
    return data


def _changed(state: State) -> None:
    if state.alerts is not None:
        state.alerts.rules_changed()


def checked_keys(state: State, spec: object) -> object:
    """``spec`` with its keys as the server names them (``eurusd`` -> ``FX_IDC:EURUSD``), or
    ``invalid_rule`` for a profile, exchange or symbol the server does not know: a rule's keys
    are collected for as long as it lives, so a typo must not cost requests forever."""
    if not isinstance(spec, dict) or not isinstance(spec.get("keys"), list):
        return spec  # rule_from_spec names what is wrong
    vocabulary = state.vocabulary
    keys = []
    for item in spec["keys"]:
        if not (isinstance(item, list) and len(item) == 3):
            return spec
        profile, symbol, tf = item
        if profile not in vocabulary.profiles:
            names = " ".join(sorted(vocabulary.profiles))
            raise AlertsApiError(400, "invalid_rule", f"keys: unknown profile; use one of {names}")
        try:
            symbol = parse_symbol(symbol, vocabulary.default_exchange, vocabulary.screeners)
        except SymbolError as error:
            raise AlertsApiError(400, "invalid_rule", f"keys: {error}") from None
        unknown = state.unknown_symbols.get(symbol)
        if unknown is not None:
            raise AlertsApiError(400, "invalid_rule", f"keys: {unknown}")
        keys.append([profile, symbol, tf])
    condition = spec.get("condition")
    output = condition.get("output", "rec.all") if isinstance(condition, dict) else None
    for profile in {key[0] for key in keys}:
        outputs = outputs_of(state, profile)
        if isinstance(output, str) and outputs and output not in outputs:
            raise AlertsApiError(400, "invalid_rule", f"output: profile {profile} has no "
                                 f"{output!r}; it has {', '.join(sorted(outputs)[:12])}, ...")
    return {**spec, "keys": keys}


def outputs_of(state: State, profile: str) -> set[str]:
    """The outputs a profile's data has: the keys of its compute on a row of nulls (what
    start-up already checks works), so a rule on an output that does not exist is refused
    instead of never firing."""
    try:
        return set(state.profiles[profile].compute({}))
    except Exception:  # a failing plugin: let the rule through, the guard handles the profile
        return set()


async def create_rule(state: State, owner: int, spec: object) -> Rule:
    """The one path a rule is created by (HTTP here, the WebSocket in ``stream``)."""
    spec = checked_keys(state, spec)
    try:
        rule = await storage.create_rule(owner, spec, limit=state.settings.alerts_max_rules)
    except storage.RuleLimit as error:
        raise AlertsApiError(409, "alert_limit", str(error)) from None
    except RuleError as error:
        raise AlertsApiError(400, "invalid_rule", str(error)) from None
    _changed(state)
    return rule


async def change_rule(state: State, owner: int, rule_id: int, *, spec: object = None,
                      muted: object = None) -> Rule:
    if muted is not None and not isinstance(muted, bool):
        raise AlertsApiError(400, "invalid_rule", "muted: must be true or false")
    if spec is not None:
        spec = checked_keys(state, spec)
    try:
        rule = await storage.update_rule(owner, rule_id, spec=spec, muted=muted)
    except storage.UnknownRule as error:
        raise AlertsApiError(404, "unknown_rule", str(error)) from None
    except RuleError as error:
        raise AlertsApiError(400, "invalid_rule", str(error)) from None
    _changed(state)
    return rule


async def remove_rule(state: State, owner: int, rule_id: int) -> None:
    try:
        await storage.delete_rule(owner, rule_id)
    except storage.UnknownRule as error:
        raise AlertsApiError(404, "unknown_rule", str(error)) from None
    _changed(state)


@blueprint.get("/api/alerts")
async def list_rules() -> Response:
    state = current_state()
    owner = await _user(state)
    return jsonify({"rules": [rule_json(r) for r in await storage.rules_of(owner)],
                    "channels": await storage.channels_of(owner)})


@blueprint.post("/api/alerts")
async def post_rule() -> tuple[Response, int]:
    state = current_state()
    owner = await _user(state)
    rule = await create_rule(state, owner, await _body())
    return jsonify(rule_json(rule)), 201


@blueprint.patch("/api/alerts/<int:rule_id>")
async def patch_rule(rule_id: int) -> Response:
    state = current_state()
    owner = await _user(state)
    body = await _body()
    unknown = set(body) - {"spec", "muted"}
    if unknown:
        raise AlertsApiError(400, "invalid_rule", f"{sorted(unknown)[0]}: unknown field")
    rule = await change_rule(state, owner, rule_id, spec=body.get("spec"),
                             muted=body.get("muted"))
    return jsonify(rule_json(rule))


@blueprint.delete("/api/alerts/<int:rule_id>")
async def delete_rule(rule_id: int) -> tuple[str, int]:
    state = current_state()
    await remove_rule(state, await _user(state), rule_id)
    return "", 204


@blueprint.get("/api/alerts/history")
async def history() -> Response:
    state = current_state()
    owner = await _user(state)
    limit = request.args.get("limit", "100")
    if not limit.isdigit() or not 0 < int(limit) <= MAX_HISTORY:
        raise AlertsApiError(400, "invalid_limit", f"limit: 1 to {MAX_HISTORY}")
    return jsonify({"triggers": _history_json(await storage.history(owner, limit=int(limit)))})


@blueprint.post("/api/alerts/channels")
async def post_channel() -> tuple[Response, int]:
    """A webhook endpoint (``{"kind": "webhook", "url": ...}``): its ``whsec_`` secret is in
    this answer and nowhere else later."""
    state = current_state()
    owner = await _user(state)
    body = await _body()
    kind = body.get("kind")
    if kind in MADE_BY_THE_BOT:
        raise AlertsApiError(400, "unknown_channel_kind",
                             f"kind: {kind} channels are made by sending /start to the bot")
    if kind not in state.channels:
        addable = sorted(set(state.channels) - MADE_BY_THE_BOT)
        raise AlertsApiError(400, "unknown_channel_kind", f"kind: one of {', '.join(addable)}")
    target = body.get("url")
    parts = urlsplit(target) if isinstance(target, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(
            target) > 512:  # type: ignore[arg-type]
        raise AlertsApiError(400, "invalid_url", "url: an http(s) URL of at most 512 characters")
    secret = new_secret() if kind == "webhook" else None
    channel_id = await storage.add_channel(owner, kind, str(target), secret=secret)
    return jsonify({"id": channel_id, "kind": kind, "url": target, "secret": secret}), 201


@blueprint.delete("/api/alerts/channels/<int:channel_id>")
async def delete_channel(channel_id: int) -> tuple[str, int]:
    state = current_state()
    if not await storage.delete_channel(await _user(state), channel_id):
        raise AlertsApiError(404, "unknown_channel", f"alert channel {channel_id} does not exist")
    return "", 204


# -- the same operations over the WebSocket (docs/protocol.md, "Alert rules") --------------

#: Ops handled here rather than by the subscription protocol: each answers with its ``id``.
WS_OPS = frozenset({"alert.list", "alert.create", "alert.update", "alert.delete",
                    "alert.history"})

#: Tasks of alert ops in flight (a strong reference each, until done).
_ws_tasks: set[asyncio.Task[None]] = set()


def is_alert_op(raw: object) -> TypeGuard[dict[str, Any]]:
    op = raw.get("op") if isinstance(raw, dict) else None
    return isinstance(op, str) and op in WS_OPS  # a hostile op may be a list or an object


def obey_ws(state: State, connection: Connection, raw: dict[str, Any]) -> None:
    """Start one alert op of a client frame. It needs the database, so it answers on its
    own (a reply or an ``error`` frame carrying the op's ``id``), after what the same frame's
    subscription ops answered."""
    owner = state.hub.users.get(connection)
    task = asyncio.create_task(_ws_op(state, connection, owner, raw))
    _ws_tasks.add(task)
    task.add_done_callback(_ws_tasks.discard)


async def _ws_op(state: State, connection: Connection, owner: int | None,
                 raw: dict[str, Any]) -> None:
    id = raw.get("id")
    if not isinstance(id, str | int) or isinstance(id, bool):
        id = None
    try:
        if owner is None:
            raise AlertsApiError(401, "unauthorized", "authenticate first")
        connection.send(protocol.reply(**await _ws_answer(state, owner, raw), id=id))
    except AlertsApiError as error:
        connection.send(protocol.reply("error", id, code=error.code, message=error.message))
    except Exception:
        log.exception("alerts: a WebSocket op failed")
        connection.send(protocol.reply("error", id, code="alerts_unavailable",
                                       message="alerts are unavailable; try again later"))


def _rule_id(raw: dict[str, Any]) -> int:
    rule_id = raw.get("rule_id")
    if not isinstance(rule_id, int) or isinstance(rule_id, bool):
        raise AlertsApiError(400, "invalid_rule", "rule_id: must be an integer")
    return rule_id


async def _ws_answer(state: State, owner: int, raw: dict[str, Any]) -> dict[str, Any]:
    op = raw["op"]
    if op == "alert.list":
        return {"type": "alerts", "rules": [rule_json(r) for r in await storage.rules_of(owner)],
                "channels": await storage.channels_of(owner)}
    if op == "alert.create":
        return {"type": "alert", "rule": rule_json(await create_rule(state, owner,
                                                                       raw.get("rule")))}
    if op == "alert.update":
        rule = await change_rule(state, owner, _rule_id(raw), spec=raw.get("rule"),
                                 muted=raw.get("muted"))
        return {"type": "alert", "rule": rule_json(rule)}
    if op == "alert.delete":
        rule_id = _rule_id(raw)
        await remove_rule(state, owner, rule_id)
        return {"type": "alert_deleted", "rule_id": rule_id}
    limit = raw.get("limit", 50)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_HISTORY:
        raise AlertsApiError(400, "invalid_limit", f"limit: 1 to {MAX_HISTORY}")
    return {"type": "alert_history", "triggers": _history_json(
        await storage.history(owner, limit=limit))}


def _history_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        row["created_at"] = row["created_at"].isoformat()
        row.pop("dedupe", None)
    return rows
