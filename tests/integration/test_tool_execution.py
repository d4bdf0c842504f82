"""Tool calls through a real Celery worker: every outcome reaches the engine's result stream as a
structured report (the engine is played by the test, reading the stream)."""

import time

import pytest

from engine.keys import results_stream
from engine.messages import CallReport, CallRequest
from engine.tools import ToolSpec
from webapp.runs.dispatch import CeleryDispatcher
from webapp.tools.demo import DEMO_TOOLS

ENGINE = "engine-under-test"


def python_tool(name, entry_point, timeout_s=5.0, properties=None):
    return ToolSpec(name, name, {"type": "object", "properties": properties or {}}, timeout_s=timeout_s,
                    kind="python", config={"entry_point": entry_point})


def call(redis_client, tool: ToolSpec, args: dict, call_id="c1", timeout=30) -> dict[str, CallReport]:
    CeleryDispatcher().dispatch(CallRequest(7, call_id, ENGINE, tool.to_dict(), args, time.time()))
    reports: dict[str, CallReport] = {}
    deadline = time.monotonic() + timeout
    last = "0"
    while "finished" not in reports and time.monotonic() < deadline:
        for _, entries in redis_client.xread({results_stream(ENGINE): last}, block=500) or []:
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


@pytest.mark.parametrize("tool, args, error", [
    (python_tool("fail", "workers.toolbox:fail"), {"message": "disk on fire"}, "RuntimeError: disk on fire"),
    (python_tool("not_json", "workers.toolbox:not_json"), {}, "result is not JSON-serialisable"),
    (python_tool("huge", "workers.toolbox:huge"), {"n": 5_000_000}, "result too large"),
    (python_tool("sleep", "workers.toolbox:sleep", timeout_s=1.0), {"seconds": 30}, "timed out after 1 s"),
    (python_tool("evil", "os:system"), {"command": "true"}, "is not in an allow-listed module"),
    (python_tool("missing", "workers.toolbox:nope"), {}, "cannot be loaded"),
])
def test_tool_failures_become_structured_errors(celery_worker_proc, redis_client, tool, args, error):
    rep = call(redis_client, tool, args)["finished"]
    assert not rep.ok and error in rep.error and rep.result is None


def test_the_worker_survives_a_timed_out_tool(celery_worker_proc, redis_client):
    call(redis_client, python_tool("sleep", "workers.toolbox:sleep", timeout_s=1.0), {"seconds": 30})
    assert call(redis_client, python_tool("add", "workers.toolbox:add"), {"a": 1, "b": 1}, "c9")["finished"].result == 2
