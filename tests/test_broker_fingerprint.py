"""A node refuses to join a cluster whose token key, profiles or profile definitions differ
(#24): fingerprints in Redis, never the secrets; one line says what differs."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from quartsig.cluster.fingerprint import ClusterMismatch, differences, fingerprints
from quartsig.cluster.redisbroker import RedisBroker
from quartsig.config import ConfigError
from quartsig.plugins.loader import get_plugin_manager, load_profiles
from quartsig.plugins.profiles import Profile
from tests.support.processes import REPO, quartsig_env
from tests.support.redisdb import REDIS_URL
from tests.test_broker_conformance import Node
from tests.test_broker_redis import VOCABULARY

PROFILES = load_profiles(get_plugin_manager(entry_points=False))
OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def changed(profile: Profile) -> Profile:
    """The same profile, computed by other code."""
    return Profile(profile.name, profile.description, profile.columns,
                   lambda row: {"other": 1})


def test_the_same_configuration_has_the_same_fingerprints():
    assert fingerprints([OLD], PROFILES) == fingerprints([OLD], dict(PROFILES))
    assert differences(fingerprints([OLD], PROFILES), fingerprints([OLD], PROFILES)) == []


def test_fingerprints_hold_no_secret():
    assert OLD not in str(fingerprints([OLD], PROFILES))


def test_another_token_key_is_named():
    assert differences(fingerprints([NEW], PROFILES), fingerprints([OLD], PROFILES)) == [
        "the token key differs (QUARTSIG_SECRET_KEYS)"]


def test_a_rolling_key_rotation_is_let_through():
    steps = [[OLD], [OLD, NEW], [NEW, OLD], [NEW]]
    for before, after in itertools.pairwise(steps):
        assert differences(fingerprints(after, PROFILES), fingerprints(before, PROFILES)) == []
    assert differences(fingerprints([NEW], PROFILES), fingerprints([OLD, NEW], PROFILES))


def test_other_profiles_and_other_profile_code_are_named():
    fewer = {name: p for name, p in PROFILES.items() if name != "summary"}
    assert differences(fingerprints([OLD], fewer), fingerprints([OLD], PROFILES)) == [
        "the profiles differ (missing here: summary)"]
    other = {**PROFILES, "summary": changed(PROFILES["summary"])}
    assert differences(fingerprints([OLD], other), fingerprints([OLD], PROFILES)) == [
        "the definition of profile summary differs"]


async def test_a_node_that_does_not_belong_fails_to_start_with_one_line(prefix: str):
    def broker(keys: list[str], profiles: dict[str, Profile]) -> RedisBroker:
        return RedisBroker(aioredis.Redis.from_url(REDIS_URL), Node(), VOCABULARY,
                           prefix=prefix, identity=fingerprints(keys, profiles))

    first = broker([OLD], PROFILES)
    await first.start()
    try:
        stranger = broker([NEW], {**PROFILES, "summary": changed(PROFILES["summary"])})
        with pytest.raises(ClusterMismatch) as refused:
            await stranger.start()
        await stranger.stop()
        message = str(refused.value)
        assert isinstance(refused.value, ConfigError)  # the CLI's one line and exit 2
        assert "\n" not in message
        assert "token key" in message and "profile summary" in message
        twin = broker([OLD], dict(PROFILES))  # the same configuration joins
        await twin.start()
        await twin.stop()
        raw = aioredis.Redis.from_url(REDIS_URL)
        stored = await raw.hgetall(f"{prefix}nodes")
        assert await raw.pttl(f"{prefix}nodes") > 0  # leaves with the last node
        await raw.aclose()
        assert OLD.encode() not in b"".join(stored.values())
    finally:
        await first.stop()


@pytest.mark.parametrize("command", [["collect"], ["serve", "--bind", "127.0.0.1:0"]])
async def test_a_process_with_another_key_exits_2_with_one_line(prefix: str, tmp_path: Path,
                                                                command: list[str]):
    first = RedisBroker(aioredis.Redis.from_url(REDIS_URL), Node(), VOCABULARY, prefix=prefix,
                        identity=fingerprints([OLD], PROFILES))
    await first.start()
    try:
        env = quartsig_env(tmp_path, "http://127.0.0.1:9", QUARTSIG_SECRET_KEYS=NEW,
                           QUARTSIG_REDIS_URL=REDIS_URL, QUARTSIG_REDIS_PREFIX=prefix)
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "quartsig", *command], env=env, cwd=REPO,
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        await first.stop()
    assert done.returncode == 2, done.stderr
    # The INFO start-up lines may come first (docs/operations.md); the failure is one line.
    failures = [line for line in done.stderr.strip().splitlines()
                if line.startswith("quartsig:") or "Traceback" in line]
    assert len(failures) == 1 and "token key differs" in failures[0], done.stderr
