"""Text a database cannot store (PostgreSQL refuses NUL in text and JSON, and lone surrogates in
JSON) is refused where it enters, with a clear error, instead of failing a write later."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> str:
    """What is wrong with `text`, or "" if every character can be stored."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return ""
    what = "a NUL character" if found.group() == "\x00" else "an unpaired surrogate code point"
    return f"it contains {what} (at position {found.start()}), which cannot be stored"


def validate_storable(text: str) -> None:
    problem = unstorable(text)
    if problem:
        raise ValidationError(f"The text cannot be accepted: {problem}.")
