from __future__ import annotations

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


class Executor:
    """One per tool kind. `run` returns a JSON-serialisable value or raises ToolError.

    A stateful kind (`stateful = True`) implements `run_stateful` instead: it receives the state
    its instance was left in (None before the first call) and returns the value and the new
    state; the worker keeps the state between calls (workers/instances.py)."""

    kind = ""
    stateful = False

    def check_config(self, config: dict[str, Any]) -> None:  # noqa: B027 - most kinds accept any config
        """Raise ToolError when a tool's configuration is unusable for this kind."""

    def instance_name(self, tool: ToolSpec) -> str:
        return tool.instance or tool.name

    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any:
        raise NotImplementedError(f"{self.kind} tools are stateful")

    def run_stateful(self, tool: ToolSpec, args: dict[str, Any], state: Any) -> tuple[Any, Any]:
        raise NotImplementedError(f"{self.kind} tools are not stateful")
