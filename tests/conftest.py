"""Shared fixtures. Area-specific fixtures live in ``tests/support/``."""

pytest_plugins = ["tests.support.soak", "tests.support.redisdb"]
