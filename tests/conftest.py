"""Shared fixtures: nothing here mocks our own components."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio.testing

import layers.base

from .redis_server import RedisServer

# Owned sends (the interface's messages) are checked in full throughout the suite, in this
# process and in the servers it starts: a message the interface builds that a user's send
# would refuse fails its test instead of passing unnoticed (production trusts the interface).
os.environ["TRIO_CHANNELS_CHECK_OWNED"] = "1"
layers.base.CHECK_OWNED = True


@pytest.fixture
def autojump() -> trio.testing.MockClock:
    """A mock clock that jumps whenever every task is blocked (in-memory transports only)."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[list[RedisServer]]:
    """Three redis-server processes of our own for the whole session (tests use unique prefixes)."""
    servers = [RedisServer().start() for _ in range(3)]
    try:
        yield servers
    finally:
        for server in servers:
            server.cleanup()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that kill and restart it."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()
