"""MCP tools: a tool of an MCP server, called through this process's session with that server.

The result is what the model can read: a tool's structured content as JSON, else its text
(parsed as JSON when it is JSON); images, audio and resources are reduced to a description of
what they were. A result the server marks as an error is an error result.
"""

from __future__ import annotations

import json
from typing import Any

from engine.tools import ToolSpec
from workers.executors.base import CallContext, Executor, ToolError
from workers.mcp_sessions import McpConnection, pool


def _describe(block: Any) -> str:
    kind = getattr(block, "type", "")
    if kind == "text":
        return str(block.text)
    if kind in ("image", "audio"):
        return f"[{kind}: {block.mime_type}, about {len(block.data) * 3 // 4} bytes, not shown]"
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        if isinstance(text, str):
            return text
        return f"[resource {resource.uri} ({resource.mime_type or 'binary'}), not shown]"
    if kind == "resource_link":
        return f"[resource link {block.uri}: {block.name}]"
    return f"[{kind or 'unknown'} content, not shown]"


def result_value(result: Any) -> Any:
    text = "\n".join(_describe(block) for block in result.content)
    if result.is_error:
        raise ToolError(text[:2000] or "the MCP tool reported an error")
    if result.structured_content is not None:
        return result.structured_content
    if len(result.content) == 1 and getattr(result.content[0], "type", "") == "text":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


class McpExecutor(Executor):
    kind = "mcp"

    def check_config(self, config: dict[str, Any]) -> None:
        McpConnection.of(config)
        if not config.get("tool"):
            raise ToolError("an MCP tool's config names the server's tool (`tool`)")

    def run(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any:
        connection = McpConnection.of(tool.config)
        result = pool().request(connection, "call_tool", str(tool.config["tool"]), args, timeout_s=tool.timeout_s)
        return result_value(result)
