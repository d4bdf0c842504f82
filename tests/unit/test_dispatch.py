"""The engine's Celery dispatcher: what goes with each call."""

from engine.messages import CallRequest
from engine.tools import ToolSpec
from webapp.runs import dispatch


def test_a_call_expires_once_the_engine_has_given_up_on_it(monkeypatch):
    sent = []
    monkeypatch.setattr(dispatch.app, "send_task", lambda name, **kw: sent.append((name, kw)))
    tool = ToolSpec("f", "", {"type": "object"}, timeout_s=3.0)
    dispatch.CeleryDispatcher().dispatch(CallRequest(7, "c1", "engine-x", tool.to_dict(), {}, 1000.0))
    ((name, kw),) = sent
    assert name == "workers.tasks.run_tool" and kw["task_id"] == "asynclm-7-c1" and kw["queue"] == "tools"
    assert (kw["soft_time_limit"], kw["time_limit"], kw["expires"]) == (3.0, 4.0, 5.0)
