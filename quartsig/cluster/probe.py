"""One look at Redis before a node starts: is ``QUARTSIG_REDIS_URL`` wrong, or Redis just down?

A node rides out a Redis outage (it serves what it holds and waits), so every error used to
be retried as one, forever: a database index out of range, a wrong password or ``rediss://``
to a Redis without TLS never heal by waiting. :func:`misconfiguration` tells them apart, so
start-up can stop with one line (exit 2) for those, and go on for an outage (issue #24.5).
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

#: Seconds the probe may take in all (an outage costs this much start-up time, once).
TIMEOUT = 3.0


async def _tcp_answers(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def misconfiguration(url: str) -> str | None:
    """Why ``url`` can never work (one line, without the password), or ``None`` when Redis
    answered or is merely unreachable."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=TIMEOUT,
                                     socket_timeout=TIMEOUT)
    parts = urlsplit(url)
    try:
        await client.ping()
    except AuthenticationError as error:
        return f"Redis refused the credentials: {error}"
    except ResponseError as error:  # SELECT of a database the server does not have, NOAUTH
        return f"Redis refused the connection: {error}"
    except RedisTimeout:
        if parts.scheme == "rediss" and parts.hostname and \
                await _tcp_answers(parts.hostname, parts.port or 6379):
            return (f"rediss:// but {parts.hostname}:{parts.port or 6379} answers no TLS "
                    "handshake (a Redis without TLS? then use redis://)")
        return None
    except Exception:  # down, unreachable: the node starts and waits for it
        return None
    finally:
        await client.aclose()
    return None
