"""Helpers shared by the tests: waiting on a condition, a test clock, running the engine core."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine.backends.base import LocalBackend
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


class DelegatingBackend(LocalBackend):
    """A local backend that answers with another one's vocabulary, tokenizer and limits; a test
    subclass overrides what it changes (usually `open_sequence`)."""

    def __init__(self, real: LocalBackend) -> None:
        self.real = real
        self.spec, self.n_vocab, self.constrained_calls = real.spec, real.n_vocab, real.constrained_calls

    @property
    def n_ctx(self) -> int:
        return self.real.n_ctx

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.real.tokenize(text, special=special)

    def token_bytes(self, token_id: int) -> bytes:
        return self.real.token_bytes(token_id)

    def stop_ids(self) -> frozenset[int]:
        return self.real.stop_ids()

    def vocab_texts(self) -> list[str]:
        return self.real.vocab_texts()

    def open_sequence(self, prompt_ids=()):  # type: ignore[no-untyped-def]
        return self.real.open_sequence(prompt_ids)
