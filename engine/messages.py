"""Typed messages that cross a process boundary, serialised as versioned JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

VERSION = 1


class MessageError(ValueError):
    """A message that cannot be decoded: wrong version, missing or mistyped fields."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0


@dataclass(frozen=True)
class TaskSubmission:
    """Web -> engine, through the intake stream."""

    task_id: int
    model: str
    prompt: str
    max_tokens: int
    submitted_at: float  # unix seconds
    sampling: Sampling = field(default_factory=Sampling)
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> TaskSubmission:
        try:
            data = json.loads(raw)
            if data.get("version") != VERSION:
                raise MessageError(f"unsupported TaskSubmission version {data.get('version')!r}")
            sampling = Sampling(**data.pop("sampling", {}))
            msg = cls(sampling=sampling, **data)
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, MessageError):
                raise
            raise MessageError(f"malformed TaskSubmission: {exc}") from exc
        if not isinstance(msg.task_id, int) or not isinstance(msg.max_tokens, int):
            raise MessageError("malformed TaskSubmission: task_id and max_tokens must be integers")
        return msg


@dataclass(frozen=True)
class TraceEvent:
    """Engine -> storage and browser. `seq` is dense per task, starting at 1."""

    task_id: int
    seq: int
    t_ms: float  # since the engine started the task
    kind: str
    payload: dict[str, Any]
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraceEvent:
        return cls(**data)


def trace_group(task_id: int) -> str:
    """Channels group that carries one task's live trace."""
    return f"task-{task_id}"
