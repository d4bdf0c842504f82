from __future__ import annotations

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


@dataclass(frozen=True)
class CallContext:
    task_id: int
    call_id: str


class Executor(ABC):
    """One per tool kind. `run` returns a JSON-serialisable value or raises ToolError."""

    kind = ""

    def check_config(self, config: dict[str, Any]) -> None:  # noqa: B027 - most kinds accept any config
        """Raise ToolError when a tool's configuration is unusable for this kind."""

    @abstractmethod
    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any: ...
