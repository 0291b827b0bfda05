"""The ``/ws`` route: handshake, authentication, then the handler task reads the client.

The route is the thin async shell around pure pieces: :mod:`protocol` parses, the
:class:`~quartsig.fanout.hub.Hub` changes state synchronously, and output never waits in this task:
a tick's frames go out from the one outbox task, replies and snapshots from the connection's
short-lived drain task (:mod:`quartsig.fanout.connection`), so a stalled client delays nobody but
itself and an idle connection costs no task beyond this handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import parse_qsl, urlsplit

from quart import Blueprint, websocket

from quartsig import hosting
from quartsig.access import admission
from quartsig.access.admission import KeyQuota
from quartsig.access.tokens import ExpiredToken, TokenError
from quartsig.domain import addresses, protocol
from quartsig.domain.model import Key
from quartsig.domain.protocol import Close, ErrorCode, ProtocolError
from quartsig.domain.ratelimit import TokenBucket
from quartsig.fanout.connection import TOO_SLOW, Connection
from quartsig.fanout.hub import TooManySubscriptions
from quartsig.state import State, current_state

log = logging.getLogger(__name__)
blueprint = Blueprint("stream", __name__)

#: How long a deliberate close may take before the peer is abandoned.
CLOSE_TIMEOUT = 2.0
#: Frames and ops refused in a row (over the rate, or not JSON ops at all) before the client is
#: closed with 1008.
MAX_STRIKES = 100


class Closing(Exception):
    """Raised inside a connection's tasks to close it with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_DEFAULT_PORTS = {"http": 80, "https": 443}
_WEB_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def _origin_tuple(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None if malformed."""
    scheme = _WEB_SCHEMES.get(scheme.lower(), "")
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:
        return None
    if not scheme or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def origin_allowed(origin: str | None, host: str, allowed: tuple[str, ...], *,
                   scheme: str = "ws", forwarded_proto: str | None = None) -> bool:
    """No Origin (a non-browser client), the server's own origin, or one on the allowlist.

    Origins are compared as (scheme, host, port), the scheme's default port filled in.
    The server's own is the ``Host`` header reached by ``scheme`` (``ws`` is ``http``,
    ``wss`` is ``https``), or by the ``X-Forwarded-Proto`` a TLS-terminating router adds:
    a page cannot set that header on a WebSocket handshake, so it cannot fool this check.
    """
    if origin is None or "*" in allowed:
        return True
    split = urlsplit(origin.strip())
    theirs = _origin_tuple(split.scheme, split.netloc) if split.netloc else None
    if theirs is None:
        return False
    if forwarded_proto:
        scheme = forwarded_proto.split(",")[0].strip()
    if theirs == _origin_tuple(scheme, host):
        return True
    for entry in allowed:
        entry_split = urlsplit(entry)
        if theirs == _origin_tuple(entry_split.scheme, entry_split.netloc):
            return True
    return False


@blueprint.websocket("/ws")
async def ws() -> tuple[str, int] | None:
    state = current_state()
    if state.shutting_down:  # refused before the upgrade: a client's backoff keeps growing
        return "server shutting down", 503
    if not origin_allowed(
        websocket.headers.get("Origin"), websocket.host, state.settings.allowed_origins,
        scheme=websocket.scheme, forwarded_proto=websocket.headers.get("X-Forwarded-Proto"),
    ):
        state.metrics.closes.labels(code="403").inc()
        return "origin not allowed", 403
    try:  # counted from here, authenticated or not (quartsig/access/admission.py)
        ticket = state.caps.enter(_client(state))
    except admission.Refused as refused:
        return refused.message, refused.status
    try:
        await websocket.accept()
        code, reason = await _serve(state, ticket)
        state.metrics.closes.labels(code=str(code)).inc()
        await _close(code, reason)
    finally:
        ticket.release()
    return None


async def _close(code: int, reason: str) -> None:
    """Send the close frame, then wait (up to ``CLOSE_TIMEOUT`` in all) for the client's.

    The server returning is what makes Hypercorn (and any ASGI server) drop TCP. Dropped
    at once, frames the client sent before it read our close met a reset, and a reset can
    destroy the close frame on its way (Windows' stack does): the client saw 1006 instead
    of 4401 and retried a bad token forever. So the frames are drained until the client's
    close frame arrives, when Quart cancels this task (the ASGI ``websocket.disconnect``).
    """
    with contextlib.suppress(Exception, asyncio.CancelledError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await websocket.close(code, reason)
            while True:  # one frame drained a turn; Quart cancels us at the client's close
                await websocket.receive()


def _client(state: State) -> addresses.Client:
    peer = (websocket.scope.get("client") or (None,))[0]
    return addresses.client_of(peer, websocket.headers.getlist("X-Forwarded-For"),
                          state.settings.trusted_proxies)


async def _serve(state: State, ticket: admission.Ticket) -> tuple[int, str]:
    """Run one connection to its end; return the close code and reason.

    The handler task itself reads. Whoever decides the connection must close (its
    drain task on a stalled send, shutdown, a disabled account) records why and
    cancels this task's read; a cancellation with no such record is Quart's, telling
    us the client went away, and goes on up.
    """
    try:
        user, auth_id, expires_at = await _authenticate(state)
        ticket.authenticated(user)
    except Closing as closing:
        return closing.code, closing.reason
    except admission.Refused as refused:
        return Close.TOO_MANY, refused.message
    if state.shutting_down:  # it authenticated while the others were being told 1001
        return Close.GOING_AWAY, "server shutting down"
    handler = asyncio.current_task()
    assert handler is not None
    connection = Connection(
        hosting.text_sender(websocket.scope, websocket.send),
        send_timeout=state.settings.send_timeout,
        outbox=state.outbox,
        on_frame=state.metrics.frame_sent,
        on_close=handler.cancel,
    )
    # authed first: attach() queues a status when upstream is not ok, and nothing may
    # precede authed (docs/protocol.md).
    connection.send(protocol.reply("authed", auth_id, tg_id=user))
    state.hub.attach(connection, user)
    state.expiries.add(connection, expires_at)
    try:
        await _read(state, connection)
    except Closing as closing:
        connection.close(closing.code, closing.reason, interrupt=False)
    except asyncio.CancelledError:
        if connection.closing is None or handler.uncancel() > 0:
            raise
    finally:
        state.expiries.remove(connection)
        state.hub.detach(connection)
        await connection.dispose()
    code, reason = connection.closing or (Close.NORMAL, "")
    if code in (Close.GOING_AWAY, Close.FORBIDDEN):  # let it see what was on its way
        with contextlib.suppress(Exception):
            await connection.flush(CLOSE_TIMEOUT)
    if reason == TOO_SLOW:
        state.metrics.slow_closes.inc()
    return code, reason


async def _receive(state: State) -> str | bytes:
    return _checked(state, await websocket.receive())


def _checked(state: State, frame: str | bytes | None) -> str | bytes:
    """``frame`` as the route takes it; :class:`Closing` (1009) when it is over the limit."""
    if frame is None:  # Quart hands an empty binary frame over as None (`b"" or text`)
        return b""
    limit = state.settings.max_frame_bytes
    if len(frame) > limit or (  # the limit is in bytes: a str of 1 400 "€" is 4 200 of them
        isinstance(frame, str)
        and 4 * len(frame) > limit
        and len(frame.encode("utf-8", "surrogatepass")) > limit
    ):
        raise Closing(Close.TOO_BIG, "frame too big")
    return frame


async def _authenticate(state: State) -> tuple[int, object, float]:
    """The token from ``?token=`` or a first ``auth`` frame -> the account's Telegram id, the
    auth's id, and when the token expires."""
    token = _token_in(websocket.query_string)
    auth_id = None
    if token is None:
        try:
            async with asyncio.timeout(state.settings.auth_timeout):
                frame = await _receive(state)
        except TimeoutError:
            raise Closing(Close.AUTH_TIMEOUT, "auth timeout") from None
        try:
            messages = protocol.decode(frame)
            message = protocol.parse_message(messages[0], state.vocabulary)
        except ProtocolError:
            message = None
        if not isinstance(message, protocol.Auth):
            raise Closing(Close.BAD_TOKEN, "auth required")
        token, auth_id = message.token, message.id
    try:
        grant = state.tokens.check(token)
    except ExpiredToken:
        raise Closing(Close.BAD_TOKEN, "token expired") from None
    except TokenError:
        raise Closing(Close.BAD_TOKEN, "bad token") from None
    user = grant.tg_id
    try:
        active = await state.gate.admit(user)
    except Exception:
        if (held := state.lookup_failures.due()) is not None:
            log.exception("account lookup failed (%d more since the last report)", held)
        raise Closing(Close.TRY_AGAIN_LATER, "accounts unavailable") from None
    if not active:
        raise Closing(Close.FORBIDDEN, "account unknown or disabled")
    return user, auth_id, grant.expires_at


def _token_in(query_string: bytes) -> str | None:
    """The first ``token`` of the query string, as ``websocket.args`` would give it, without
    the parsed ``args`` that Quart keeps on the websocket for the connection's life."""
    for name, value in parse_qsl(query_string.decode("utf-8", "replace"), keep_blank_values=True):
        if name == "token":
            return value
    return None


async def _read(state: State, connection: Connection) -> None:
    """Drain the client's frames for as long as it is connected, obeying each op in order.

    Each frame is handled by a plain function, so that nothing parsed from it is still
    referenced while this waits for the next: an idle connection kept its last frame's
    JSON alive (~350 B each, tracemalloc) when the loop held it in its locals. It awaits
    Quart's ``receive`` itself rather than through :func:`_receive`: one coroutine frame
    fewer held by every idle connection."""
    settings = state.settings
    bucket = TokenBucket(settings.ops_per_second, 2 * settings.ops_per_second)
    strikes = 0
    receive = websocket.receive
    while True:
        strikes = _handle(state, connection, _checked(state, await receive()), bucket, strikes)


def _handle(state: State, connection: Connection, frame: str | bytes,
            bucket: TokenBucket, strikes: int) -> int:
    """Obey one client frame; returns the count of refusals in a row so far.

    Every frame is metered: an op takes a token, and so does a frame refused whole (binary,
    not JSON, an empty array, a batch over the limit), which is also a strike. Unmetered, one
    socket sending garbage made the server answer thousands of errors a second, for ever."""
    try:
        messages = _messages(frame)
    except ProtocolError as error:
        return _refuse(connection, bucket, strikes, error)
    for raw in messages:
        if not bucket.take():
            strikes = _strike(strikes)
            connection.send(protocol.error(ErrorCode.RATE_LIMITED, "slow down", _id_of(raw)))
            continue
        strikes = 0
        try:
            _obey(state, connection, protocol.parse_message(raw, state.vocabulary))
        except ProtocolError as error:
            connection.send(protocol.error(error.code, error.message, error.id))
    return strikes


def _messages(frame: str | bytes) -> list[object]:
    if isinstance(frame, bytes):
        raise ProtocolError(ErrorCode.BAD_JSON, "frames must be JSON text")
    return protocol.decode(frame)


def _refuse(connection: Connection, bucket: TokenBucket, strikes: int,
            error: ProtocolError) -> int:
    """A frame refused whole: a strike, and its error only while there are tokens for it."""
    strikes = _strike(strikes)
    if bucket.take():
        connection.send(protocol.error(error.code, error.message))
    else:
        connection.send(protocol.error(ErrorCode.RATE_LIMITED, "slow down"))
    return strikes


def _strike(strikes: int) -> int:
    """One more refusal in a row; past ``MAX_STRIKES`` the client is closed with 1008."""
    if strikes >= MAX_STRIKES:
        raise Closing(Close.POLICY, "rate limit")
    return strikes + 1


def _id_of(raw: object) -> object:
    try:
        return protocol.message_id(raw) if isinstance(raw, dict) else None
    except ProtocolError:
        return None


def _admit_new_key(state: State, connection: Connection, key: Key, id: object) -> bool:
    """True when ``key`` may be fetched early (:func:`admission.admit_new_key` decides)."""
    hub = state.hub
    free, watched = hub.standing(connection, key)
    try:
        verdict = admission.admit_new_key(
            state.new_keys, hub.users.get(connection), key, free=free, watched=watched,
            held=len(hub.entries), count_watched=hub.watched, max_keys=state.settings.max_keys,
            cluster_keys=state.broker.cluster_keys() if state.broker is not None else 0, id=id)
    except ProtocolError as refused:
        state.metrics.refusals.labels(code=str(refused.code)).inc()
        raise
    if verdict == KeyQuota.TICK:
        state.metrics.early_deferred.labels(reason="quota").inc()
    return verdict == KeyQuota.EARLY


def _obey(state: State, connection: Connection, message: protocol.Message) -> None:
    hub = state.hub
    if isinstance(message, protocol.Ping):
        connection.send(protocol.reply("pong", message.id))
    elif isinstance(message, protocol.Auth):
        raise ProtocolError(ErrorCode.BAD_OP, "already authenticated", message.id)
    else:
        target = {"symbol": message.symbol, "tf": message.tf, "profile": message.profile}
        key = Key(message.profile, message.symbol, message.tf)
        if isinstance(message, protocol.Subscribe):
            unknown = state.unknown_symbols.get(message.symbol)
            if unknown is not None:
                raise ProtocolError(ErrorCode.UNKNOWN_SYMBOL, unknown, message.id)
            early = _admit_new_key(state, connection, key, message.id)
            try:
                hub.subscribe(connection, key, early=early)
            except TooManySubscriptions as error:
                raise ProtocolError(
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS, str(error), message.id
                ) from None
            # Replies leave before pieces in the same frame, so this precedes the snapshot.
            connection.send(protocol.reply("subscribed", message.id, **target))
            if not early:
                connection.send(protocol.deferred(
                    key, "over this account's early fetches for the minute: first data comes "
                    "with the next tick"))
        else:
            hub.unsubscribe(connection, key)
            connection.send(protocol.reply("unsubscribed", message.id, **target))
