"""What goes into Redis and what comes out of it, where nothing read is trusted.

Anyone who can write to the cluster's Redis (a bug, an old version, an attacker who reached an
unauthenticated port) can leave anything there. Every name read goes through the same
vocabulary as a client's subscription (:class:`~quartsig.domain.protocol.Vocabulary`), every
value and batch is shape-checked, and every ``seq`` is bounded by the global counter, so one bad
entry costs one skipped entry (counted in ``quartsig_redis_rejected_total{what}``, logged once
per kind), never a reader, the demand, or a key pinned to a forged value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from quartsig.domain.model import Batch, Key
from quartsig.domain.protocol import Vocabulary
from quartsig.domain.symbols import SymbolError, parse_symbol
from quartsig.domain.timeframes import TimeframeError, parse_timeframe

log = logging.getLogger(__name__)

#: Largest ``seq``, ``ts`` or term accepted: JSON's safe integers (a Unix-ms term fits).
MAX_NUMBER = 2**53
#: Longest message or reason carried in a batch (the collector's are a line).
MAX_TEXT = 1_000
#: Checked names remembered (about a cluster's worth of keys, twice).
MAX_KNOWN = 50_000


class Untrusted(ValueError):
    """Something read from Redis is not what quartsig writes there; the message says what."""


def key_name(key: Key) -> str:
    return f"{key.profile}|{key.symbol}|{key.tf}"


def number(value: object, low: int = 0, high: int = MAX_NUMBER) -> int:
    """An integer in ``[low, high]`` from JSON or from a Redis field (bytes of digits)."""
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace")
        if not text.isascii() or not text.isdigit() or len(text) > 16:
            raise Untrusted(f"not a number: {text[:20]!r}")
        value = int(text)
    if type(value) is not int or not low <= value <= high:
        raise Untrusted(f"not an integer in [{low}, {high}]: {str(value)[:20]}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise Untrusted("not a short string")
    return value


def _pair(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise Untrusted("not a list")
    return value


class Codec:
    """Reads (and writes) Redis's names and entries for one node's vocabulary."""

    def __init__(self, vocabulary: Vocabulary,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.vocabulary = vocabulary
        self._on_reject = on_reject
        self._logged: set[str] = set()
        #: Names already checked: the leader reads the whole demand every tick.
        self._known: dict[object, Key] = {}

    def reject(self, what: str, error: Exception) -> None:
        """Count a skipped entry of kind ``what``; the first of each kind is logged."""
        if self._on_reject is not None:
            self._on_reject(what)
        if what not in self._logged:
            self._logged.add(what)
            log.warning("skipped a bad %s read from Redis: %s (further ones are only counted "
                        "in quartsig_redis_rejected_total)", what, error)

    # -- names --------------------------------------------------------------------------------

    def key(self, name: object) -> Key:
        """A key name from Redis, checked as a client's subscription would be, and canonical."""
        known = self._known.get(name) if isinstance(name, bytes) else None
        if known is not None:
            return known
        key = self._check(name)
        if isinstance(name, bytes):
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known[name] = key
        return key

    def _check(self, name: object) -> Key:
        try:
            text = name.decode() if isinstance(name, bytes) else name
            if not isinstance(text, str) or len(text) > 128:
                raise Untrusted("not a short string")
            profile, symbol, tf = text.split("|")
            vocabulary = self.vocabulary
            canonical = parse_symbol(symbol, vocabulary.default_exchange, vocabulary.screeners)
            if canonical != symbol or parse_timeframe(tf) != tf:
                raise Untrusted("not canonical")
            if profile not in vocabulary.profiles:
                raise Untrusted("unknown profile")
        except (ValueError, UnicodeDecodeError, SymbolError, TimeframeError) as error:
            shown = name[:40] if isinstance(name, bytes | str) else type(name).__name__
            raise Untrusted(f"bad key name {shown!r}: {error}") from None
        return Key(profile, symbol, tf)

    def keys(self, names: object, what: str) -> list[Key]:
        """The good keys among ``names``; each bad one is skipped and counted."""
        keys = []
        for name in names if isinstance(names, list | tuple) else ():
            try:
                keys.append(self.key(name))
            except Untrusted as error:
                self.reject(what, error)
        return keys

    # -- values -------------------------------------------------------------------------------

    @staticmethod
    def encode_value(data: dict[str, Any], ts: int) -> bytes:
        return orjson.dumps([data, ts])

    def value(self, raw: object, ceiling: int) -> tuple[int, dict[str, Any], int]:
        """``latest``'s ``"seq [data, ts]"``: the ``seq`` may not exceed ``ceiling`` (the global
        counter read with it), so a forged huge one cannot hide every later value."""
        if not isinstance(raw, bytes):
            raise Untrusted("not bytes")
        seq_text, _, body = raw.partition(b" ")
        seq = number(seq_text, 1, max(1, ceiling))
        try:
            data, ts = _pair(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError):
            raise Untrusted("not [data, ts]") from None
        return seq, self.data(data), number(ts)

    @staticmethod
    def data(data: object) -> dict[str, Any]:
        if not isinstance(data, dict) or not all(isinstance(name, str) for name in data):
            raise Untrusted("data is not an object")
        return data

    # -- batches ------------------------------------------------------------------------------

    @staticmethod
    def encode_batch(batch: Batch, values: list[tuple[Key, dict[str, Any], int]],
                     last: bool) -> bytes:
        """One stream entry: a chunk of ``batch``'s values, its notices and status on the last."""
        return orjson.dumps({
            "term": batch.term,
            "values": [[key_name(key), data, ts] for key, data, ts in values],
            "rejected": [[key_name(key), code, message] for key, code, message in batch.rejected]
            if last else [],
            "failed": [[key_name(key), code, message] for key, code, message in batch.failed]
            if last else [],
            "deferred": [[key_name(key), message, at] for key, message, at in batch.deferred]
            if last else [],
            "status": list(batch.status) if last and batch.status is not None else None,
            "retry_at": batch.retry_at if last else None,
        })

    def batch(self, raw: object) -> Batch:
        """A stream entry's batch; a bad shape raises, a bad key drops just its item."""
        try:
            body = orjson.loads(raw) if isinstance(raw, bytes) else None
            if not isinstance(body, dict):
                raise Untrusted("not an object")
            status = body.get("status")
            retry_at = body.get("retry_at")
            return Batch(
                values=[(key, self.data(data), number(ts)) for key, data, ts
                        in self._items(body.get("values"), 3)],
                rejected=[(key, _text(code), _text(message)) for key, code, message
                          in self._items(body.get("rejected"), 3)],
                failed=[(key, _text(code), _text(message)) for key, code, message
                        in self._items(body.get("failed"), 3)],
                deferred=[(key, _text(message), number(at)) for key, message, at
                          in self._items(body.get("deferred"), 3)],
                retry_at=None if retry_at is None else number(retry_at),
                status=None if status is None else self._status(status),
                term=number(body.get("term")),
            )
        except (orjson.JSONDecodeError, TypeError, ValueError) as error:
            raise Untrusted(f"bad batch: {error}") from None

    def _items(self, items: object, size: int) -> list[tuple[Any, ...]]:
        """Rows of ``[name, ...]`` with their names parsed; rows with a bad name are skipped."""
        if not isinstance(items, list):
            raise Untrusted("not a list")
        rows = []
        for item in items:
            if not isinstance(item, list) or len(item) != size:
                raise Untrusted("a row of the wrong shape")
            try:
                rows.append((self.key(item[0]), *item[1:]))
            except Untrusted as error:
                self.reject("key", error)
        return rows

    @staticmethod
    def _status(status: object) -> tuple[str, str]:
        upstream, reason = _pair(status)
        return _text(upstream), _text(reason)

    @staticmethod
    def encode_status(batch: Batch) -> bytes:
        return orjson.dumps([*batch.status, batch.retry_at]) if batch.status else b""

    def status(self, raw: object) -> tuple[tuple[str, str], int | None]:
        """The last published status and its ``retry_at``."""
        try:
            upstream, reason, retry_at = _pair(orjson.loads(raw) if isinstance(raw, bytes)
                                               else None)
            return (_text(upstream), _text(reason)), (None if retry_at is None
                                                      else number(retry_at))
        except (orjson.JSONDecodeError, TypeError, ValueError) as error:
            raise Untrusted(f"bad status: {error}") from None
