from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.tools import ToolSpec


class ToolError(Exception):
    """A failure the model should see as an error interrupt (bad config, tool raised, ...)."""


@dataclass(frozen=True)
class CallContext:
    task_id: int
    call_id: str


class Executor:
    kind = ""

    def check_config(self, config: dict[str, Any]) -> None:
        """Raise ToolError when a tool's configuration is unusable for this kind."""

    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any:
        raise NotImplementedError
