"""Signed webhooks, as Standard Webhooks 1.0 has them: the built-in ``webhook`` channel.

Each request is a JSON POST with ``webhook-id`` (the same on every retry, so the receiver
dedupes), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``: ``v1,`` and the
base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the endpoint's secret, ``whsec_`` and
base64 of 24 random bytes. Any Standard Webhooks library verifies it (:func:`verify` is the
same check in Python, for receivers and tests).

The far end's answer becomes an :class:`Outcome`: 2xx sent; 410 gone (the worker disables the
endpoint); 429, 502, 503, 504 and every other 5xx, a timeout or a refused connection retry
(honouring ``Retry-After`` in seconds); other 4xx failed, as the request will not get better.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
import orjson

from quartsig.alerts.channels import Message, Outcome, Target
from quartsig.plugins.hookspecs import hookimpl

PREFIX: Final = "whsec_"
TOLERANCE: Final = 300
"""Seconds a receiver accepts between ``webhook-timestamp`` and its clock (either way)."""

#: The longest ``Retry-After`` taken at its word (seconds): a day, the retry schedule's span.
MAX_RETRY_AFTER: Final = 86_400.0


class SignatureError(ValueError):
    """A webhook's headers do not prove it came from the secret's holder, or it is stale."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(os.urandom(24)).decode()


def _key(secret: str) -> bytes:
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret.removeprefix(PREFIX), validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for one request."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(secret: str, received: Mapping[str, str], body: bytes, *,
           now: float | None = None, tolerance: int = TOLERANCE) -> str:
    """The ``webhook-id`` of a genuine request; :class:`SignatureError` otherwise. Any one of
    the space-separated ``v1,`` signatures may match (a secret being rotated)."""
    msg_id = received.get("webhook-id", "")
    stamp = received.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        raise SignatureError("webhook-id or webhook-timestamp missing")
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance:
        raise SignatureError("webhook-timestamp too far from now")
    expected = sign(secret, msg_id, int(stamp), body)
    for candidate in received.get("webhook-signature", "").split():
        if hmac.compare_digest(candidate, expected):
            return msg_id
    raise SignatureError("no signature matches")


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is not used by receivers we know)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def outcome(status: int, after: str | None = None) -> Outcome:
    """What an HTTP answer means for the delivery."""
    if 200 <= status < 300:
        return Outcome("sent")
    if status == 410:
        return Outcome("gone", "410 Gone: the endpoint was removed")
    if status in (408, 425, 429) or status >= 500:
        return Outcome("retry", f"HTTP {status}", retry_after(after))
    return Outcome("failed", f"HTTP {status}")


class WebhookChannel:
    """POSTs each message, signed, with one ``aiohttp`` session for the channel's life."""

    kind = "webhook"

    def __init__(self, *, timeout: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, message: Message, target: Target) -> Outcome:
        if not target.secret:
            return Outcome("failed", "the endpoint has no secret")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        body = orjson.dumps(message.payload)
        signed = headers(target.secret, message.id, int(self.clock()), body)
        try:
            async with self._session.post(target.address, data=body, headers=signed,
                                          allow_redirects=False) as response:
                return outcome(response.status, response.headers.get("Retry-After"))
        except TimeoutError:
            return Outcome("retry", f"no answer within {self.timeout:g}s")
        except aiohttp.ClientError as error:
            return Outcome("retry", f"{error.__class__.__name__}: {error}"[:200])


@hookimpl
def register_channels() -> list[WebhookChannel]:
    return [WebhookChannel()]  # one per app: its session belongs to that app's loop
