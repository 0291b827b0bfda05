"""A pytest plugin (loaded by ``tests/conftest.py``): the shared Redis on 127.0.0.1:6379, one
key prefix per test (``prefix``), so tests never see each other's data. Tests that must kill or
restart Redis start their own ``redis-server`` instead (``tests/test_cluster.py``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

REDIS_URL = "redis://127.0.0.1:6379/0"


async def redis_up() -> bool:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    if not await redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    name = f"test:{uuid.uuid4().hex[:8]}:"
    yield name
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = await client.keys(name + "*")
    if keys:
        await client.delete(*keys)
    await client.aclose()
