"""The tests' MCP servers, built with the official MCP SDK: a small weather server that runs over
stdio or streamable HTTP. It imports nothing of the project, so the allow-listed stdio command can
run it by path.

    python tests/mcp_servers.py stdio
    python tests/mcp_servers.py http --port 8765 [--variant changed]

`--variant changed` is the same server after an upgrade: `get_weather` takes a new argument and
`lookup` is gone, so a re-import must update one tool and prune another.
"""

from __future__ import annotations

import argparse
import os
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from mcp_types import ToolAnnotations

TINY_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                         "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def build(variant: str) -> MCPServer:
    server = MCPServer("asynclm-test-weather", log_level="WARNING")

    if variant == "changed":
        @server.tool(description="Current weather in a city, in the unit asked for.")
        def get_weather(city: str, unit: str = "C") -> dict:
            return {"city": city, "temp": 64 if unit == "F" else 18, "unit": unit}
    else:
        @server.tool(description="Current weather in a city.",
                     annotations=ToolAnnotations(read_only_hint=True))
        def get_weather(city: str) -> dict:
            return {"city": city, "temp_c": 18, "sky": "sunny"}

        @server.tool(name="lookup-code", description="The airport code of a city.",
                     annotations=ToolAnnotations(read_only_hint=True))
        def lookup(city: str) -> str:
            return {"Paris": "CDG", "Tokyo": "HND"}.get(city, "unknown")

    @server.tool(description="Returns its argument (the benchmark's zero-work tool).")
    def echo(i: int) -> int:
        return i

    @server.tool(description="Waits, then answers.")
    def slow(ms: int) -> str:
        time.sleep(ms / 1000)
        return f"waited {ms} ms"

    @server.tool(description="A map of the city.")
    def city_map(city: str) -> Image:
        return Image(data=TINY_PNG, format="png")

    @server.tool(description="Fails, saying why.")
    def broken(city: str) -> str:
        raise ToolError(f"no data for {city}")

    @server.tool(description="The server process dies while it runs this call.")
    def die(city: str) -> str:
        os._exit(3)

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--variant", default="first")
    parser.add_argument("--json-response", action="store_true",
                        help="answer each request with one JSON body instead of an event stream")
    options = parser.parse_args()
    server = build(options.variant)
    if options.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=options.port, json_response=options.json_response)


if __name__ == "__main__":
    main()
