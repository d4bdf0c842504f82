"""MCP servers as tool packs, against real MCP servers built with the SDK (tests/mcp_servers.py),
one over streamable HTTP and one over stdio: the import (schemas, descriptions, read-only hints,
re-import, a changed server), and calls through the real processes (engine on the simulated
decoder, Celery worker, Redis), including a server that dies mid-call."""

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import subprocess_env
from tests.helpers import wait_for
from webapp.core.processes import Proc, free_port, listening
from webapp.runs.models import Task, TraceEvent
from webapp.runs.submit import submit_task
from webapp.tools.mcp import import_tools
from webapp.tools.models import McpServer, Tool
from workers.executors import ToolError
from workers.mcp_sessions import McpConnection, pool

pytestmark = pytest.mark.django_db(transaction=True)

SERVER = Path(__file__).resolve().parents[1] / "mcp_servers.py"


class McpHttpServers:
    """Test MCP servers over streamable HTTP, each a subprocess on its own port."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[int, Proc] = {}

    def __call__(self, variant: str = "first", port: int | None = None, json_response: bool = False) -> str:
        port = port or free_port()
        argv = [sys.executable, str(SERVER), "http", "--port", str(port), "--variant", variant]
        proc = Proc(f"mcp-{port}", argv + (["--json-response"] if json_response else []), subprocess_env(),
                    self.log_dir)
        self.procs[port] = proc
        proc.wait_until(lambda: listening(port), 30, "the MCP server to listen")
        return f"http://127.0.0.1:{port}/mcp"

    def stop(self, port: int) -> None:
        self.procs.pop(port).kill()


@pytest.fixture
def start_mcp_http(tmp_path) -> Iterator[McpHttpServers]:
    servers = McpHttpServers(tmp_path)
    yield servers
    for proc in servers.procs.values():
        proc.kill()


def tools_of(pack: str) -> dict[str, Tool]:
    return {t.name: t for t in Tool.objects.filter(pack__name=pack)}


def test_it_imports_a_servers_tools_with_their_schemas_and_hints(start_mcp_http):
    url = start_mcp_http()
    call_command("add_mcp_server", "weather", url)
    tools = tools_of("mcp-weather")
    assert set(tools) == {"get_weather", "lookup_code", "echo", "slow", "city_map", "broken", "die"}
    weather = tools["get_weather"]
    assert weather.kind == "mcp" and weather.description == "Current weather in a city."
    assert weather.parameters["required"] == ["city"] and weather.parameters["properties"]["city"]["type"] == "string"
    assert weather.config == {"transport": "http", "url": url, "command": "", "server": "weather",
                              "tool": "get_weather"}
    assert tools["lookup_code"].config["tool"] == "lookup-code"  # the MCP name, kept for the call
    assert [n for n, t in sorted(tools.items()) if t.read_only] == ["get_weather", "lookup_code"]
    assert McpServer.objects.get(name="weather").imported_at is not None


def test_importing_again_changes_nothing_and_a_changed_server_is_followed(start_mcp_http, tmp_path):
    port = free_port()
    url = start_mcp_http(port=port)
    call_command("add_mcp_server", "weather", url)
    server = McpServer.objects.get(name="weather")
    before = {t.name: (t.pk, t.parameters) for t in Tool.objects.filter(pack__name="mcp-weather")}
    report = import_tools(server)
    assert report.created == report.updated == report.removed == [] and len(report.unchanged) == 7
    assert {t.name: (t.pk, t.parameters) for t in Tool.objects.filter(pack__name="mcp-weather")} == before

    start_mcp_http.stop(port)  # the server is replaced by its new version on the same port
    start_mcp_http(variant="changed", port=port)
    report = wait_for(lambda: _try_import(server), 30, "the changed server to answer")
    assert report.updated == ["get_weather"] and report.removed == ["lookup_code"]
    assert "unit" in tools_of("mcp-weather")["get_weather"].parameters["properties"]
    assert tools_of("mcp-weather")["get_weather"].pk == before["get_weather"][0]  # the same tool, updated


def _try_import(server):
    try:
        return import_tools(server)
    except ToolError:
        return None


def test_a_stdio_server_from_the_allow_list_is_imported():
    call_command("add_mcp_server", "weather-stdio", "test-weather")
    assert "get_weather" in tools_of("mcp-weather-stdio")


@pytest.mark.parametrize("target, words", [
    ("http://10.20.30.40:8080/mcp", "not on the allow-list"),
    ("rm -rf /", "not on the allow-list"),
    ("ftp://127.0.0.1/mcp", "url"),
])
def test_a_server_off_the_allow_lists_is_refused(target, words):
    with pytest.raises(CommandError) as caught:
        call_command("add_mcp_server", "bad", target)
    assert words in str(caught.value)
    assert not McpServer.objects.exists() and not Tool.objects.exists()


def test_an_unreachable_server_is_a_clear_error_and_is_recorded():
    with pytest.raises(CommandError, match="could not be listed"):
        call_command("add_mcp_server", "gone", f"http://127.0.0.1:{free_port()}/mcp", "--timeout-s", "3")
    assert McpServer.objects.get(name="gone").last_error


@pytest.mark.parametrize("json_response", [False, True], ids=["event-stream", "json"])
def test_results_images_and_tool_errors_come_back_as_the_model_reads_them(start_mcp_http, json_response):
    """Whichever way the server answers (an event stream, or one JSON body per request)."""
    connection = McpConnection("http", start_mcp_http(json_response=json_response))
    from workers.executors.mcp import result_value

    weather = result_value(pool().request(connection, "call_tool", "get_weather", {"city": "Paris"}, timeout_s=10))
    assert weather == {"city": "Paris", "temp_c": 18, "sky": "sunny"}
    picture = result_value(pool().request(connection, "call_tool", "city_map", {"city": "Paris"}, timeout_s=10))
    assert picture.startswith("[image: image/png") and "not shown" in picture
    with pytest.raises(ToolError, match="no data for Rome"):
        result_value(pool().request(connection, "call_tool", "broken", {"city": "Rome"}, timeout_s=10))
    with pytest.raises(ToolError, match="did not answer within 1 s"):
        pool().request(connection, "call_tool", "slow", {"ms": 3000}, timeout_s=1)


def plan_prompt(calls: list[dict]) -> str:
    plan = {"calls": calls, "final": "Done.", "token_ms": 5, "wait": "trap"}
    return f"Use the tools.\n[plan] {json.dumps(plan)}\n"


def test_calls_run_on_the_workers_over_http_and_stdio(start_engine, celery_worker_proc, alice, start_mcp_http):
    call_command("add_mcp_server", "weather", start_mcp_http())
    call_command("add_mcp_server", "weather-stdio", "test-weather")
    start_engine("engine-mcp", preload="simulated")
    tools = [tools_of("mcp-weather")["get_weather"].spec().to_dict(),
             tools_of("mcp-weather-stdio")["lookup_code"].spec().to_dict()]
    calls = [{"id": "c1", "call": "get_weather(city='Paris')", "e": 500, "after": None},
             {"id": "c2", "call": "lookup_code(city='Tokyo')", "e": 500, "after": None}]
    task = submit_task(alice, prompt=plan_prompt(calls), model="simulated", mode="async", max_tokens=200, tools=tools)
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 60, "the task to end")
    task.refresh_from_db()
    assert task.status == "finished", task.status_reason
    results = {e.payload["call_id"]: e.payload for e in TraceEvent.objects.filter(task=task, kind="call_result")}
    assert results["c1"]["ok"] and json.loads(results["c1"]["injected"])["temp_c"] == 18
    assert results["c2"]["ok"] and "HND" in results["c2"]["injected"], results["c2"]


def test_a_server_that_dies_mid_call_gives_an_error_result_and_the_next_call_reconnects(
        start_engine, celery_worker_proc, alice):
    call_command("add_mcp_server", "weather-stdio", "test-weather")
    start_engine("engine-mcp-die", preload="simulated")
    tools = tools_of("mcp-weather-stdio")
    specs = [tools["die"].spec().to_dict(), tools["get_weather"].spec().to_dict()]
    calls = [{"id": "c1", "call": "die(city='Paris')", "e": 500, "after": None},
             {"id": "c2", "call": "get_weather(city='Paris')", "e": 500, "after": "c1"}]
    task = submit_task(alice, prompt=plan_prompt(calls), model="simulated", mode="async", max_tokens=200, tools=specs)
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 60, "the task to end")
    task.refresh_from_db()
    assert task.status == "finished", task.status_reason
    results = {e.payload["call_id"]: e.payload for e in TraceEvent.objects.filter(task=task, kind="call_result")}
    assert not results["c1"]["ok"] and "MCP" in results["c1"]["error"]
    assert results["c2"]["ok"] and json.loads(results["c2"]["injected"])["city"] == "Paris", results["c2"]


def test_the_admin_registers_a_server_from_the_allow_list_and_imports_its_tools(admin_client):
    page = admin_client.get("/admin/tools/mcpserver/add/")
    assert page.status_code == 200 and b"test-weather" in page.content
    refused = admin_client.post("/admin/tools/mcpserver/add/", {
        "name": "evil", "transport": "stdio", "url": "", "command": "bash -c 'rm -rf /'", "timeout_s": "30"})
    assert refused.status_code == 200 and b"Select a valid choice" in refused.content
    assert not McpServer.objects.exists()
    added = admin_client.post("/admin/tools/mcpserver/add/", {
        "name": "weather", "transport": "stdio", "url": "", "command": "test-weather", "timeout_s": "30"})
    assert added.status_code == 302
    server = McpServer.objects.get(name="weather")
    done = admin_client.post("/admin/tools/mcpserver/", {"action": "import_selected", "_selected_action": [server.pk]},
                             follow=True)
    assert b"pack mcp-weather: 7 new" in done.content
    assert "get_weather" in tools_of("mcp-weather")
