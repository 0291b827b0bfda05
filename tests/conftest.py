"""Shared fixtures. Area-specific fixtures live in ``tests/support/``."""
