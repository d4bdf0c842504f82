"""Tools of kind `agent` (a call starts a sub-agent's task, webapp/runs/agents.py) and `team` (a
team member's built-in send_message, webapp/runs/teams.py): the dispatcher hands their calls to
`workers.tasks.start_agent` and `workers.tasks.team_message`; nothing here runs a call itself."""

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


class TeamExecutor(Executor):
    kind = "team"

    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any:
        raise ToolError("send_message is delivered by the team's worker task, not run as a tool")
