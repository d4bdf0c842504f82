"""Allow-listed Python tools for the demo pack and the tests."""

from __future__ import annotations

import time


def add(a: float, b: float) -> float:
    return a + b


def word_count(text: str) -> dict:
    return {"words": len(text.split()), "chars": len(text)}


def fail(message: str = "the tool failed") -> None:
    raise RuntimeError(message)


def sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds}


def not_json() -> object:
    return object()


def huge(n: int) -> str:
    return "x" * n
