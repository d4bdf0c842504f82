from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from engine.tools import ToolSpec


class ToolError(Exception):
    """A failure the model should see as an error interrupt (bad config, refused host, ...)."""

    kind = "tool_error"


class TransientToolError(ToolError):
    """A failure worth retrying (connection refused, 5xx): the worker retries before reporting."""

    kind = "transient"


class CallFailed(Exception):
    """The outcome of a call that did not produce a value: reported as {"error": {type, message}}."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class CallContext:
    task_id: int
    call_id: str
    order: int = 0  # the call's position among its task's calls, in the order the model issued them


def planned_latency_ms(config: dict[str, Any], call_id: str, args: dict[str, Any]) -> float | None:
    """A benchmark fixes each call's latency in the tool's config: by call id (the simulated
    decoder's ids are the plan's), else by the call's arguments (a model picks its own ids)."""
    by_call = config.get("latency_by_call") or {}
    if call_id in by_call:
        return float(by_call[call_id])
    by_args = config.get("latency_by_args") or {}
    key = json.dumps(args, sort_keys=True)
    return float(by_args[key]) if key in by_args else None


class BaseExecutor:
    """One per tool kind (one small module each)."""

    kind = ""

    def check_config(self, config: dict[str, Any]) -> None:  # noqa: B027 - most kinds accept any config
        """Raise ToolError when a tool's configuration is unusable for this kind."""


class Executor(BaseExecutor, ABC):
    """A stateless kind: `run` returns a JSON-serialisable value or raises ToolError."""

    @abstractmethod
    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any: ...


class StatefulExecutor(BaseExecutor, ABC):
    """A kind whose calls act on an instance's state: `run_stateful` receives the state the
    instance was left in (None before its first call) and returns the value and the new state;
    the worker keeps the state between calls (workers/instances.py)."""

    def instance_name(self, tool: ToolSpec) -> str:
        return tool.instance or tool.name

    @abstractmethod
    def run_stateful(self, tool: ToolSpec, args: dict[str, Any], state: Any) -> tuple[Any, Any]: ...
