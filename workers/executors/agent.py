"""Tools of kind `agent`: a call starts a sub-agent's task (webapp/runs/agents.py), which the
dispatcher hands to `workers.tasks.start_agent`; nothing here runs the call itself."""

from __future__ import annotations

from typing import Any

from engine.tools import ToolSpec
from workers.executors.base import CallContext, Executor, ToolError


class AgentExecutor(Executor):
    kind = "agent"

    def check_config(self, config: dict[str, Any]) -> None:
        from webapp.runs.agents import AgentConfigError, check_agent_config

        try:
            check_agent_config(config)
        except AgentConfigError as exc:
            raise ToolError(str(exc)) from None

    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any:
        raise ToolError("an agent tool's call starts a sub-agent task; it is not run by a tool worker")
