"""Shared fixtures. Area-specific fixtures live in ``tests/support/``."""

from hypothesis import settings

pytest_plugins = ["tests.support.soak", "tests.support.redisdb"]

# The suite must pass on a busy 2-core machine: Hypothesis's per-example deadline (200 ms)
# measures the machine, not the code, so no test has one.
settings.register_profile("quartsig", deadline=None)
settings.load_profile("quartsig")
