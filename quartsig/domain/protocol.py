"""The wire protocol: typed client messages in, encoded server frames out.

Everything here is pure so that the contract in ``docs/protocol.md`` can be
tested without a socket. Parsing never raises anything but
:class:`ProtocolError`, whatever a client sends, and every error names one of
the documented codes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from quartsig.domain.model import Key
from quartsig.domain.symbols import SymbolError, parse_symbol
from quartsig.domain.timeframes import TimeframeError, parse_timeframe

#: Largest integer a JavaScript client can hold exactly; bigger ids are refused.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_ID_LENGTH = 64
#: A client array frame may carry this many messages at most.
MAX_BATCH = 64


class Close(enum.IntEnum):
    """Close codes. 1xxx are RFC 6455's; 44xx mirror HTTP and mean "do not retry as is"."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect with backoff
    POLICY = 1008  # flooding or a frame type the protocol does not use
    TOO_BIG = 1009  # frame over the size limit
    TRY_AGAIN_LATER = 1013  # hopelessly behind: reconnect with backoff
    BAD_TOKEN = 4401  # malformed, tampered or expired token: get a new one
    FORBIDDEN = 4403  # unknown or disabled account, or forbidden origin
    AUTH_TIMEOUT = 4408  # no auth within the deadline
    TOO_MANY = 4429  # over the account's connection cap: reconnect with backoff

    @property
    def retry(self) -> bool:
        """Whether a client should reconnect on its own after this code."""
        return self not in {Close.BAD_TOKEN, Close.FORBIDDEN, Close.POLICY, Close.TOO_BIG}


class ErrorCode(enum.StrEnum):
    BAD_JSON = "bad_json"
    BAD_OP = "bad_op"
    BAD_SYMBOL = "bad_symbol"
    BAD_TIMEFRAME = "bad_timeframe"
    BAD_PROFILE = "bad_profile"
    UNKNOWN_SYMBOL = "unknown_symbol"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    RATE_LIMITED = "rate_limited"
    PROFILE_FAILED = "profile_failed"
    QUOTA_EXCEEDED = "quota_exceeded"
    KEY_LIMIT = "key_limit"


#: The code of a ``notice`` frame: a key's first data waits for the next try (the subscription
#: stays).
DEFERRED = "deferred"


class ProtocolError(Exception):
    """A client message that cannot be obeyed; answered with an ``error`` frame."""

    def __init__(self, code: ErrorCode, message: str, id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    id: Any = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    symbol: str
    tf: str
    profile: str
    id: Any = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    symbol: str
    tf: str
    profile: str
    id: Any = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: Any = None


Message = Auth | Subscribe | Unsubscribe | Ping


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """What a subscription may name: the loaded profiles and the exchange table."""

    profiles: frozenset[str]
    screeners: Mapping[str, str]
    default_exchange: str = "FX_IDC"
    default_profile: str = "full"


def decode(frame: str | bytes) -> list[Any]:
    """The JSON values in one client frame: an object, or an array of objects."""
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is not valid JSON") from None
    if isinstance(value, list):
        if not value:
            raise ProtocolError(ErrorCode.BAD_OP, "empty array")
        if len(value) > MAX_BATCH:
            raise ProtocolError(ErrorCode.BAD_OP, f"at most {MAX_BATCH} messages per frame")
        return value
    return [value]


def message_id(raw: Mapping[str, Any]) -> Any:
    if "id" not in raw:
        return None
    value = raw["id"]
    if isinstance(value, bool) or value is None:
        raise ProtocolError(ErrorCode.BAD_OP, "id must be a string or an integer")
    if isinstance(value, int) and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_LENGTH:
        return value
    raise ProtocolError(
        ErrorCode.BAD_OP,
        f"id must be a string of at most {MAX_ID_LENGTH} characters or a safe integer",
    )


def _target(raw: Mapping[str, Any], vocabulary: Vocabulary, id: Any) -> tuple[str, str, str]:
    try:
        symbol = parse_symbol(raw.get("symbol"), vocabulary.default_exchange, vocabulary.screeners)
    except SymbolError as error:  # an unknown exchange too
        raise ProtocolError(ErrorCode.BAD_SYMBOL, str(error), id) from None
    try:
        tf = parse_timeframe(raw.get("tf"))
    except TimeframeError as error:
        raise ProtocolError(ErrorCode.BAD_TIMEFRAME, str(error), id) from None
    profile = raw.get("profile", vocabulary.default_profile)
    if not isinstance(profile, str) or profile not in vocabulary.profiles:
        names = " ".join(sorted(vocabulary.profiles))
        raise ProtocolError(ErrorCode.BAD_PROFILE, f"unknown profile; use one of {names}", id)
    return symbol, tf, profile


def _auth(raw: Mapping[str, Any], vocabulary: Vocabulary, id: Any) -> Auth:
    token = raw.get("token")
    if not isinstance(token, str):
        raise ProtocolError(ErrorCode.BAD_OP, "auth needs a string token", id)
    return Auth(token, id)


def _subscribe(raw: Mapping[str, Any], vocabulary: Vocabulary, id: Any) -> Subscribe:
    return Subscribe(*_target(raw, vocabulary, id), id=id)


def _unsubscribe(raw: Mapping[str, Any], vocabulary: Vocabulary, id: Any) -> Unsubscribe:
    return Unsubscribe(*_target(raw, vocabulary, id), id=id)


def _ping(raw: Mapping[str, Any], vocabulary: Vocabulary, id: Any) -> Ping:
    return Ping(id)


_PARSERS: dict[str, Callable[[Mapping[str, Any], Vocabulary, Any], Message]] = {
    "auth": _auth,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "ping": _ping,
}


def parse_message(raw: Any, vocabulary: Vocabulary) -> Message:
    """One decoded JSON value -> a typed message, or :class:`ProtocolError`."""
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_OP, "each message must be a JSON object")
    id = message_id(raw)
    op = raw.get("op")
    parser = _PARSERS.get(op) if isinstance(op, str) else None
    if parser is None:
        raise ProtocolError(ErrorCode.BAD_OP, f"op must be one of {' '.join(_PARSERS)}", id)
    return parser(raw, vocabulary, id)


# -- server frames ---------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> str:
    """Encode one server message. Text, because browsers' ``JSON.parse`` wants a string."""
    return orjson.dumps(message).decode()


def reply(type: str, id: Any = None, **fields: Any) -> str:
    message = {"type": type, **fields}
    if id is not None:
        message["id"] = id
    return encode(message)


def error(code: ErrorCode, message: str, id: Any = None) -> str:
    return reply("error", id, code=str(code), message=message)


def key_error(key: Key, code: str, message: str) -> str:
    """An ``error`` about one key (its profile failed): it names the key, not an op's id."""
    return reply("error", code=str(code), message=message, **_key_fields(key))


def deferred(key: Key, message: str, retry_at: int | None = None) -> str:
    """The ``deferred`` notice: ``key``'s first data waits; ``retry_at`` (Unix ms) when the
    next try is known (upstream throttling), absent when it is simply the next tick."""
    if retry_at is None:
        return reply("notice", code=DEFERRED, message=message, **_key_fields(key))
    return reply("notice", code=DEFERRED, message=message, retry_at=retry_at,
                 **_key_fields(key))


def _key_fields(key: Key) -> dict[str, str]:
    return {"symbol": key.symbol, "tf": key.tf, "profile": key.profile}


def data_frame(
    type: str, symbol: str, tf: str, profile: str, data: Mapping[str, Any], ts: int
) -> str:
    """A ``snapshot`` or ``update``: encoded once per key and tick, shared by subscribers."""
    return encode(
        {"type": type, "symbol": symbol, "tf": tf, "profile": profile, "data": data, "ts": ts}
    )


def join(pieces: list[str]) -> str:
    """Pack pieces that are already encoded into one frame, without re-encoding them."""
    if len(pieces) == 1:
        return pieces[0]
    return "[" + ",".join(pieces) + "]"
