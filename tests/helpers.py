"""Helpers shared by the tests: waiting on a condition, a test clock, running the engine core."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine.messages import TraceEvent
from engine.scheduler import Scheduler


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it returns something true (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Clock:
    """A clock that advances `step` seconds at every reading (the first reading is `start`)."""

    def __init__(self, step: float = 0.001, start: float | None = None) -> None:
        self.step = step
        self.now = (step if start is None else start) - step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def run_until_idle(scheduler: Scheduler, limit: int | None = 500) -> list[TraceEvent]:
    """Step the scheduler until it has nothing runnable (or `limit` events came out)."""
    events: list[TraceEvent] = []
    while scheduler.has_work() and (limit is None or len(events) <= limit):
        events += scheduler.step()
    return events
