"""Typed messages that cross a process boundary, serialised as versioned JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

VERSION = 1


class MessageError(ValueError):
    """A message that cannot be decoded: wrong version, missing or mistyped fields."""


def plain(message: Any) -> dict[str, Any]:
    """A message dataclass as a dict for the wire, without copying its values: `asdict` deep-copies
    every nested dict and list (a tool's schema, an event's payload), which cost a dispatch about
    0.3 ms of the decode loop's time. The dict is serialised at once and never changed."""
    out = {}
    for f in fields(message):
        value = getattr(message, f.name)
        out[f.name] = asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
    return out


class JsonMessage:
    """Versioned JSON on the wire. Subclasses are dataclasses; `_build` turns the decoded dict
    into an instance (nested dataclasses included)."""

    def to_json(self) -> str:
        return json.dumps(plain(self), separators=(",", ":"))

    @classmethod
    def _build(cls, data: dict[str, Any]) -> Any:
        return cls(**data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Any:
        name = cls.__name__
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != VERSION:
                version = data.get("version") if isinstance(data, dict) else None
                raise MessageError(f"unsupported {name} version {version!r}")
            return cls._build(data)
        except MessageError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise MessageError(f"malformed {name}: {exc}") from exc


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0


MODES = ("sync", "sync_parallel", "async")


@dataclass(frozen=True)
class Budgets:
    max_calls: int = 16
    max_wall_s: float = 300.0
    max_result_chars: int = 2000  # longer results are truncated with a visible marker


TURN_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class TaskSubmission(JsonMessage):
    """Web -> engine, through the intake stream."""

    task_id: int
    model: str
    prompt: str
    max_tokens: int
    submitted_at: float  # unix seconds
    sampling: Sampling = field(default_factory=Sampling)
    mode: str = "async"
    tools: list[dict[str, Any]] = field(default_factory=list)  # ToolSpec dicts, snapshot at submission
    budgets: Budgets = field(default_factory=Budgets)
    # Named stateful instances' starting state (a BFCL scenario), once per instance rather than in
    # every tool of its class: the engine adds it to the calls of that instance's tools.
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Benchmarks only: the model still runs a forward pass per token, but the token it emits is
    # taken from this text (teacher forcing), so a systems measurement does not depend on what
    # a small model chooses to write. Results are labelled "forced".
    forced_text: str = ""
    # The conversation before `prompt` (a chat client's earlier turns): [{"role", "content"}] with
    # role system, user or assistant. The profile renders it as chat turns.
    conversation: list[dict[str, str]] = field(default_factory=list)
    version: int = VERSION

    @classmethod
    def _build(cls, data: dict[str, Any]) -> TaskSubmission:
        sampling = Sampling(**data.pop("sampling", {}))
        budgets = Budgets(**data.pop("budgets", {}))
        msg = cls(sampling=sampling, budgets=budgets, **data)
        if not isinstance(msg.task_id, int) or not isinstance(msg.max_tokens, int):
            raise MessageError("malformed TaskSubmission: task_id and max_tokens must be integers")
        if msg.mode not in MODES:
            raise MessageError(f"malformed TaskSubmission: unknown mode {msg.mode!r}")
        if not isinstance(msg.instances, dict) or not all(isinstance(v, dict) for v in msg.instances.values()):
            raise MessageError("malformed TaskSubmission: instances must map names to objects")
        if not isinstance(msg.conversation, list) or not all(
                isinstance(m, dict) and m.get("role") in TURN_ROLES and isinstance(m.get("content"), str)
                for m in msg.conversation):
            raise MessageError("malformed TaskSubmission: conversation must be a list of {role, content} "
                               f"with role in {', '.join(TURN_ROLES)}")
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
        return plain(self)


def trace_group(task_id: int) -> str:
    """Channels group that carries one task's live trace."""
    return f"task-{task_id}"


@dataclass(frozen=True)
class CallRequest:
    """Engine -> Celery worker: run one tool call and report to the engine's inbox stream."""

    task_id: int
    call_id: str
    engine_id: str
    tool: dict[str, Any]  # ToolSpec dict
    args: dict[str, Any]
    dispatched_at: float  # unix seconds
    order: int = 0  # position among the task's calls in the model's order (stateful tools use it)
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


@dataclass(frozen=True)
class CallReport(JsonMessage):
    """Celery worker -> engine, through the engine's inbox stream: a call started or finished."""

    task_id: int
    call_id: str
    phase: str  # "started" | "finished"
    worker: str
    at: float  # unix seconds
    ok: bool = True
    result: Any = None  # JSON value when ok
    error: str = ""  # short message for the model; the traceback stays in the worker log
    error_type: str = ""  # timeout, invalid_arguments, tool_error, not_json, too_large, exception
    version: int = VERSION


@dataclass(frozen=True)
class Control(JsonMessage):
    """Web -> the engine holding a task, on that engine's inbox stream (field "c")."""

    task_id: int
    action: str  # "cancel" | "message"
    reason: str = ""
    text: str = ""  # a person's message for the task (action "message")
    version: int = VERSION
