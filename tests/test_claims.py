"""Claims in memory (an injected clock) and in Redis: first claimer wins, only the owner renews
or releases, a lapsed claim can be taken."""

from __future__ import annotations

import pytest

from quartsig.cluster.claims import MemoryClaims, RedisClaims
from tests.support.redisdb import REDIS_URL


async def test_memory_claims_follow_their_clock() -> None:
    now = [100.0]
    claims = MemoryClaims(clock=lambda: now[0])
    assert await claims.claim("x", "a", 10)
    assert not await claims.claim("x", "b", 10)
    assert not await claims.renew("x", "b", 10)
    await claims.release("x", "b")
    assert await claims.holder("x") == "a"
    now[0] += 9
    assert await claims.renew("x", "a", 10)
    now[0] += 9.5
    assert not await claims.claim("x", "b", 10)
    now[0] += 1
    assert await claims.claim("x", "b", 10)  # lapsed: free to take
    assert not await claims.renew("x", "a", 10)


@pytest.mark.usefixtures("prefix")
async def test_redis_claims_are_shared_and_owned(prefix: str) -> None:
    one, two = RedisClaims.from_url(REDIS_URL, prefix), RedisClaims.from_url(REDIS_URL, prefix)
    try:
        assert await one.claim("update:1", "a", 60)
        assert not await two.claim("update:1", "b", 60)
        assert not await two.renew("update:1", "b", 60)
        await two.release("update:1", "b")
        assert await two.holder("update:1") == "a"
        assert await one.renew("update:1", "a", 60)
        await one.release("update:1", "a")
        assert await two.claim("update:1", "b", 60)
    finally:
        await one.close()
        await two.close()
