"""DropLog: what a connection dropped is a few lines with counts, never a line per drop (mock clock)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from interface.core import DROP_LOG_INTERVAL, DropLog


async def test_first_drop_at_once_then_one_line_per_interval_then_the_total(
    autojump: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """1000 drops over 35 s: the first at once, one summary per 10 s, and the total at the end."""
    caplog.set_level(logging.WARNING, logger="interface")
    drops = DropLog("interface.p!c")
    for _ in range(1000):
        drops.dropped("reply", "full")
        await trio.sleep(0.035)
    drops.close()
    lines = [record.getMessage() for record in caplog.records]
    assert DROP_LOG_INTERVAL == 10
    assert lines[0] == "interface.p!c: dropped 1 reply (full)"
    assert [line.split(" (")[0] for line in lines[1:]] == [
        "interface.p!c: dropped 286 more replies in 10 s",
        "interface.p!c: dropped 286 more replies in 10 s",
        "interface.p!c: dropped 286 more replies in 10 s",
        "interface.p!c: dropped 1000 replies in all",
    ]
    assert all(record.levelno == logging.WARNING for record in caplog.records)


async def test_kinds_are_counted_apart_and_a_lone_drop_is_one_line(
    autojump: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Each kind has its own count and level; a single drop is one line, with no total after it."""
    caplog.set_level(logging.WARNING, logger="interface")
    drops = DropLog("interface.p!c")
    drops.dropped("websocket.disconnect", "channel full")
    for _ in range(3):
        drops.dropped("bad reply", "unknown key", logging.ERROR)
    drops.close()
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.WARNING, "interface.p!c: dropped 1 websocket.disconnect (channel full)"),
        (logging.ERROR, "interface.p!c: dropped 1 bad reply (unknown key)"),
        (logging.ERROR, "interface.p!c: dropped 3 bad replies in all (unknown key)"),
    ]


async def test_happened_counts_events_that_are_not_drops(
    autojump: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The same helper rate-limits other WARNINGs (the interface's one-a-minute lines): the
    text first, then a count with the last text, then the total."""
    caplog.set_level(logging.WARNING, logger="interface")
    warnings = DropLog("interface", interval=60)
    for index in range(5):
        warnings.happened("http_timeout", f"no response to 'GET /{index}'")
        await trio.sleep(20)
    warnings.close()
    assert [record.getMessage() for record in caplog.records] == [
        "interface: no response to 'GET /0'",
        "interface: 3 more http_timeouts in 60 s (the last: no response to 'GET /3')",
        "interface: 5 http_timeouts in all (the last: no response to 'GET /4')",
    ]
