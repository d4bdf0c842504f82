"""Tool calls through a real Celery worker: every outcome reaches the engine's result stream as a
structured report (the engine is played by the test, reading the stream)."""

import time

import pytest

from engine.keys import inbox_stream
from engine.messages import CallReport, CallRequest
from engine.tools import ToolSpec
from webapp.runs.dispatch import CeleryDispatcher
from webapp.tools.demo import DEMO_TOOLS

ENGINE = "engine-under-test"


def python_tool(name, entry_point, timeout_s=5.0, properties=None):
    return ToolSpec(
        name,
        name,
        {"type": "object", "properties": properties or {}},
        timeout_s=timeout_s,
        kind="python",
        config={"entry_point": entry_point},
    )


def call(redis_client, tool: ToolSpec, args: dict, call_id="c1", timeout=30, order=0) -> dict[str, CallReport]:
    CeleryDispatcher().dispatch(CallRequest(7, call_id, ENGINE, tool.to_dict(), args, time.time(), order=order))
    reports: dict[str, CallReport] = {}
    deadline = time.monotonic() + timeout
    last = "0"
    while "finished" not in reports and time.monotonic() < deadline:
        for _, entries in redis_client.xread({inbox_stream(ENGINE): last}, block=500) or []:
            for entry_id, fields in entries:
                last = entry_id
                rep = CallReport.from_json(fields[b"r"])
                if rep.call_id == call_id:
                    reports[rep.phase] = rep
    assert "finished" in reports, f"no result for {tool.name} within {timeout} s"
    return reports


def test_a_simulated_tool_reports_start_then_a_deterministic_result(celery_worker_proc, redis_client):
    weather = ToolSpec(**{k: v for k, v in DEMO_TOOLS[0].items()})
    first = call(redis_client, weather, {"city": "Oslo"})
    again = call(redis_client, weather, {"city": "Oslo"}, call_id="c2")
    assert first["started"].at <= first["finished"].at
    assert first["finished"].ok and first["finished"].result["city"] == "Oslo"
    assert first["finished"].result == again["finished"].result
    assert first["finished"].at - first["started"].at >= 0.25  # its latency was simulated


def test_an_allow_listed_python_tool_runs(celery_worker_proc, redis_client):
    rep = call(redis_client, python_tool("add", "workers.toolbox:add"), {"a": 2, "b": 3})["finished"]
    assert rep.ok and rep.result == 5


@pytest.mark.parametrize(
    "tool, args, error",
    [
        (python_tool("fail", "workers.toolbox:fail"), {"message": "disk on fire"}, "RuntimeError: disk on fire"),
        (python_tool("not_json", "workers.toolbox:not_json"), {}, "result is not JSON-serialisable"),
        (python_tool("huge", "workers.toolbox:huge"), {"n": 5_000_000}, "result too large"),
        (python_tool("sleep", "workers.toolbox:sleep", timeout_s=1.0), {"seconds": 30}, "timed out after 1 s"),
        (python_tool("evil", "os:system"), {"command": "true"}, "is not in an allow-listed module"),
        (python_tool("missing", "workers.toolbox:nope"), {}, "cannot be loaded"),
    ],
)
def test_tool_failures_become_structured_errors(celery_worker_proc, redis_client, tool, args, error):
    rep = call(redis_client, tool, args)["finished"]
    assert not rep.ok and error in rep.error and rep.result is None


def test_the_worker_survives_a_timed_out_tool(celery_worker_proc, redis_client):
    call(redis_client, python_tool("sleep", "workers.toolbox:sleep", timeout_s=1.0), {"seconds": 30})
    assert call(redis_client, python_tool("add", "workers.toolbox:add"), {"a": 1, "b": 1}, "c9")["finished"].result == 2


@pytest.fixture
def http_endpoint():
    """A real local HTTP server with a few behaviours, on a free port."""
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = _json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/echo":
                payload, status = _json.dumps({"got": body, "call": self.headers["X-AsyncLM-Call"]}), 200
            elif self.path == "/big":
                payload, status = _json.dumps("x" * 50_000), 200
            else:
                payload, status = "nope", 503
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def http_tool(url, **config):
    return ToolSpec(
        "remote",
        "remote",
        {"type": "object", "properties": {}},
        timeout_s=5.0,
        kind="http",
        config={"url": url, **config},
    )


def test_an_http_tool_posts_the_arguments_as_json(celery_worker_proc, redis_client, http_endpoint):
    rep = call(redis_client, http_tool(http_endpoint + "/echo"), {"city": "Oslo"})["finished"]
    assert rep.ok and rep.result == {"got": {"city": "Oslo"}, "call": "c1"}


@pytest.mark.parametrize(
    "path, config, error",
    [
        ("/fail", {}, "HTTP 503 from 127.0.0.1"),
        ("/big", {"max_response_bytes": 1000}, "response larger than 1000 bytes"),
    ],
)
def test_http_failures_become_structured_errors(celery_worker_proc, redis_client, http_endpoint, path, config, error):
    rep = call(redis_client, http_tool(http_endpoint + path, **config), {})["finished"]
    assert not rep.ok and error in rep.error


def test_an_http_tool_off_the_allow_list_is_refused(celery_worker_proc, redis_client):
    rep = call(redis_client, http_tool("http://example.org/api"), {})["finished"]
    assert not rep.ok and "not on the allow-list" in rep.error


@pytest.mark.django_db
def test_the_admin_test_call_runs_through_a_worker(celery_worker_proc, redis_client, admin_client):
    from django.urls import reverse

    from webapp.tools.demo import install_demo_pack
    from webapp.tools.models import Tool, ToolPack

    install_demo_pack(ToolPack, Tool)
    tool = Tool.objects.get(name="get_weather")
    response = admin_client.post(
        reverse("admin:tools_tool_test_call", args=[tool.pk]), {"arguments": '{"city": "Oslo"}'}
    )
    body = response.content.decode()
    assert "Latency (enqueue → result)" in body and "&quot;city&quot;: &quot;Oslo&quot;" in body


async def test_a_worker_tells_the_tasks_channels_group(celery_worker_proc, redis_client):
    import asyncio

    from channels.layers import get_channel_layer

    from engine.messages import trace_group

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(trace_group(7), channel)
    tool = python_tool("add", "workers.toolbox:add")
    CeleryDispatcher().dispatch(CallRequest(7, "c5", ENGINE, tool.to_dict(), {"a": 1, "b": 2}, time.time()))
    phases = []
    while len(phases) < 2:
        message = await asyncio.wait_for(layer.receive(channel), timeout=30)
        assert message["type"] == "call.report" and message["report"]["call_id"] == "c5"
        phases.append(message["report"]["phase"])
    assert phases == ["started", "finished"]
