"""The webhook route, and ``/bot.json`` for the board.

``POST /telegram/<path>``: the path is derived from the token (404 for any other), the
``X-Telegram-Bot-Api-Secret-Token`` header must match (401 otherwise, nothing changes), then the
update is parsed, deduped by ``update_id`` and queued for the worker; the answer comes at once,
never after Telegram was called. A malformed update is logged and answered 200: Telegram retries
anything else for a day, and retrying cannot mend it.

``GET /bot.json``: ``{"username": ..., "link": "https://t.me/..."}`` (nulls without a bot), so
the board can say "Get a new link from @<bot>" when a token expires or is refused; with the
board's token as a bearer, also ``"unreachable"``: the bot got a 403 for this account (shown on
the board until the user writes to the bot again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import TYPE_CHECKING, Any

from quart import Blueprint, current_app, request

from quartsig.access import chats
from quartsig.access.tokens import TokenError
from quartsig.ops.logs import Sparse
from quartsig.state import current_state

if TYPE_CHECKING:  # aiogram loads only with a bot (quartsig.telegram.client says why)
    from aiogram.types import Update
from quartsig.telegram.service import EXTENSION, BotService

log = logging.getLogger(__name__)

blueprint = Blueprint("telegram", __name__)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_malformed = Sparse(60.0)
#: Seconds ``/bot.json`` waits for ``getMe`` when the username is not known yet.
USERNAME_WAIT = 3.0


def _service() -> BotService | None:
    service: BotService | None = current_app.extensions.get(EXTENSION)
    return service if service is not None and service.worker is not None else None


def parse_update(body: bytes | str) -> Update | None:
    """The update, or None when the body is not one (logged, at most once a minute)."""
    from aiogram.types import Update
    from pydantic import ValidationError

    try:
        return Update.model_validate_json(body)
    except (ValidationError, ValueError) as error:
        if (held := _malformed.due()) is not None:
            log.warning("bot: malformed update ignored (%d more since the last report): %s",
                        held, str(error).splitlines()[0])
        return None


@blueprint.post("/telegram/<path>")
async def webhook(path: str) -> tuple[dict[str, Any], int]:
    service = _service()
    if service is None or not hmac.compare_digest(path.encode(), service.path.encode()):
        return {"error": "not_found", "message": "no such route"}, 404
    given = request.headers.get(SECRET_HEADER, "")
    if not hmac.compare_digest(given.encode(), service.secret.encode()):
        return {"error": "unauthorized", "message": "bad secret token"}, 401
    update = parse_update(await request.get_data(as_text=False))
    if update is None:
        return {}, 200
    service.learn_base_url(request.host_url)
    if await service.accept(update) == "busy":
        return {"error": "busy", "message": "try again later"}, 503
    return {}, 200


@blueprint.get("/bot.json")
async def bot_json() -> dict[str, Any]:
    service, username = _service(), None
    if service is not None and service.identity is not None:
        username = service.identity.known
        if username is None:  # Telegram may be slow at start-up: ask, briefly
            with contextlib.suppress(Exception):
                async with asyncio.timeout(USERNAME_WAIT):
                    username = await service.identity.username()
    link = (service and service.chat_url) or f"https://t.me/{username}"
    body: dict[str, Any] = {"username": username, "link": link if username else None}
    tg_id = _bearer_account()
    if service is not None and tg_id is not None:  # the board asks about its own account
        with contextlib.suppress(Exception):
            body["unreachable"] = await chats.is_unreachable(tg_id)
    return body


def _bearer_account() -> int | None:
    """The account of the request's ``Authorization: Bearer <token>``, if valid."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        return current_state().tokens.verify(token.strip())
    except TokenError:
        return None
