"""Waiting in tests: on a condition, never for a fixed time.

A fixed pause is too short on a loaded machine (the test fails at random) and too long on a calm one (the suite
crawls). These wait until the condition holds, return at once when it does, and fail loudly, naming what they
waited for, when it never comes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from lorawizard.core.launch.runs import RunRecord
from lorawizard.core.train.step import RunFollower

POLL_S = 0.02


def until(condition: Callable[[], object], timeout: float = 20.0, what: str = "the condition") -> None:
    """Until `condition()` is true (checked every POLL_S); AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


async def pilot_until(pilot: Any, condition: Callable[[], object], timeout: float = 20.0,
                      what: str = "the condition") -> None:
    """The same inside a Textual test: the app handles its messages between checks."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pilot.pause(POLL_S)


def pid_gone(pid: int) -> bool:
    """No process has this pid any more (a zombie not yet reaped still counts as there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def follow_to_end(record: RunRecord, timeout: float = 30) -> RunFollower:
    """Follow a run (as the dashboard does) until its process ends; the follower has read the whole log."""
    follower = RunFollower(record)
    deadline = time.monotonic() + timeout
    while record.is_alive():
        follower.poll()
        assert time.monotonic() < deadline, "run did not end"
        time.sleep(0.05)
    follower.finish()
    return follower
