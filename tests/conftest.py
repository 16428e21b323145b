"""Shared fixtures: nothing here mocks our own components."""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def autojump() -> trio.testing.MockClock:
    """A mock clock that jumps whenever every task is blocked (in-memory transports only)."""
    return trio.testing.MockClock(autojump_threshold=0)
