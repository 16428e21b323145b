"""The supervisor's pure parts: its restart policy and how it names an exit (issue 14 §1).

The supervisor itself runs real processes: ``tests/e2e/test_cli_processes.py``.
"""

from __future__ import annotations

import os
import signal

import pytest

from trio_channels.supervisor import RestartPolicy, Supervised, cpu_count, describe_exit


def test_backoff_doubles_and_is_capped() -> None:
    """0.5 s after the first exit in a row, doubling, never above 30 s."""
    policy = RestartPolicy()
    assert [policy.delay(failures) for failures in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_a_child_that_ran_a_while_starts_a_new_row() -> None:
    """An exit after stable_after seconds counts as the first in a row again."""
    policy = RestartPolicy()
    failures = 0
    for ran_for in (1.0, 2.0, 0.5):
        failures = policy.failures(failures, ran_for)
    assert failures == 3
    assert policy.failures(failures, 10.0) == 1


def test_five_exits_within_ten_seconds_is_a_crash_loop() -> None:
    """The limit counts exits inside a sliding window: spread out, they never add up."""
    policy = RestartPolicy()
    assert [policy.crash_loop(now) for now in (0, 1, 2, 3)] == [False] * 4
    assert policy.crash_loop(9.9)
    spread = RestartPolicy()
    assert not any(spread.crash_loop(now * 2.6) for now in range(20))


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (0, "exited with status 0"),
        (2, "exited with status 2"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-signal.SIGTERM, "was killed by SIGTERM"),
        (-200, "was killed by signal 200"),
    ],
)
def test_describe_exit(returncode: int, text: str) -> None:
    assert describe_exit(returncode) == text


def test_cpu_count_is_the_affinity() -> None:
    """--processes 0: the cores this process may run on, not every core of the machine."""
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cpu_count() == expected


def test_a_process_that_was_not_handed_anything_is_not_supervised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handed file descriptors come from the environment, which is cleared for the app's own
    subprocesses."""
    monkeypatch.delenv("TRIO_CHANNELS_SUPERVISED", raising=False)
    assert Supervised.from_environment() is None
    monkeypatch.setenv(
        "TRIO_CHANNELS_SUPERVISED", '{"index": 2, "bind": [3, 4], "ws_bind": [5], "control": 6}'
    )
    handed = Supervised.from_environment()
    assert handed == Supervised(index=2, bind=("fd://3", "fd://4"), ws_bind=("fd://5",), control=6)
    assert "TRIO_CHANNELS_SUPERVISED" not in os.environ
