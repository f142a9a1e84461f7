"""Shared fixtures: the real service processes live in tests/services.py."""

pytest_plugins = ["tests.services"]
