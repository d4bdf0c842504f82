"""MCP: what the model reads of a tool's result, and where a server may be."""

import base64

import pytest
from mcp_types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from webapp.tools.mcp import local_name
from workers.executors import ToolError
from workers.executors.mcp import result_value
from workers.mcp_sessions import McpConnection


def result(*content, structured=None, error=False) -> CallToolResult:
    return CallToolResult(content=list(content), structured_content=structured, is_error=error)


def test_structured_content_wins_and_json_text_is_parsed():
    assert result(TextContent(text="ignored"), structured={"t": 1}).structured_content == {"t": 1}
    assert result_value(result(TextContent(text="ignored"), structured={"t": 1})) == {"t": 1}
    assert result_value(result(TextContent(text='{"a": [1, 2]}'))) == {"a": [1, 2]}
    assert result_value(result(TextContent(text="plain words"))) == "plain words"
    assert result_value(result(TextContent(text="1"), TextContent(text="2"))) == "1\n2"


def test_images_audio_and_resources_become_a_description():
    png = base64.b64encode(b"x" * 300).decode()
    value = result_value(result(
        ImageContent(data=png, mime_type="image/png"),
        AudioContent(data=png, mime_type="audio/wav"),
        EmbeddedResource(resource=TextResourceContents(uri="file:///notes.txt", text="the notes")),
        EmbeddedResource(resource=BlobResourceContents(uri="file:///a.bin", blob=png, mime_type="application/zip")),
        ResourceLink(uri="file:///big.csv", name="big.csv"),
    ))
    lines = value.split("\n")
    assert lines[0] == "[image: image/png, about 300 bytes, not shown]"
    assert lines[1].startswith("[audio: audio/wav")
    assert lines[2] == "the notes"
    assert lines[3] == "[resource file:///a.bin (application/zip), not shown]"
    assert lines[4] == "[resource link file:///big.csv: big.csv]"
    assert png not in value


def test_a_result_marked_as_an_error_is_an_error_result():
    with pytest.raises(ToolError, match="city unknown"):
        result_value(result(TextContent(text="city unknown"), error=True))


@pytest.mark.parametrize("name, local", [("get-weather", "get_weather"), ("a.b", "a_b"), ("3d", "t_3d"),
                                          ("ok_name", "ok_name")])
def test_mcp_names_become_names_the_model_can_write(name, local):
    assert local_name(name) == local


def test_http_servers_must_be_on_an_allow_listed_host_and_port(settings):
    settings.ASYNCLM_MCP_HOSTS = ["localhost", "127.0.0.1:8765"]
    McpConnection("http", "http://localhost:9999/mcp").check()  # a bare host: any port
    McpConnection("http", "http://127.0.0.1:8765/mcp").check()
    for url in ("http://127.0.0.1:8766/mcp", "http://example.com/mcp", "file:///etc/passwd", "http://127.0.0.1:x/"):
        with pytest.raises(ToolError):
            McpConnection("http", url).check()


def test_stdio_servers_start_only_from_the_allow_list(settings):
    settings.ASYNCLM_MCP_STDIO_COMMANDS = {"weather": "python3 weather.py --stdio"}
    McpConnection("stdio", command="weather").check()
    with pytest.raises(ToolError, match="not on the allow-list"):
        McpConnection("stdio", command="python3 evil.py").check()
    with pytest.raises(ToolError, match="unknown MCP transport"):
        McpConnection("sse", url="http://127.0.0.1/sse").check()
