"""One executor per tool kind. Nothing typed into the registry is ever executed as code."""

from workers.executors.agent import AgentExecutor, TeamExecutor
from workers.executors.base import BaseExecutor, CallFailed, Executor, StatefulExecutor, ToolError, TransientToolError
from workers.executors.bfcl import BfclExecutor
from workers.executors.http import HttpExecutor
from workers.executors.mcp import McpExecutor
from workers.executors.python import PythonExecutor
from workers.executors.simulated import SimulatedExecutor

EXECUTORS: dict[str, BaseExecutor] = {
    "simulated": SimulatedExecutor(), "python": PythonExecutor(), "http": HttpExecutor(), "bfcl": BfclExecutor(),
    "agent": AgentExecutor(), "team": TeamExecutor(), "mcp": McpExecutor(),
}


def executor_for(kind: str) -> BaseExecutor:
    try:
        return EXECUTORS[kind]
    except KeyError:
        raise ToolError(f"no executor for tool kind {kind!r}") from None


__all__ = ["EXECUTORS", "BaseExecutor", "CallFailed", "Executor", "StatefulExecutor", "ToolError", "TransientToolError",
           "executor_for"]
