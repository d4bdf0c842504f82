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


def test_it_puts_one_command_on_the_broker_per_call_and_subscribes_to_no_result(monkeypatch, redis_client):
    """Results come back on the engine's inbox: a dispatch must not also subscribe to Celery's
    result channel for the call (and unsubscribe when the result handle is dropped), which were two
    more Redis commands in the engine's loop per call."""
    import redis.connection

    commands = []
    send = redis.connection.AbstractConnection.send_command

    def recording(self, *args, **options):
        commands.append(str(args[0]).upper())
        return send(self, *args, **options)

    dispatcher = dispatch.CeleryDispatcher()
    tool = ToolSpec("f", "", {"type": "object"}, timeout_s=3.0)
    dispatcher.dispatch(CallRequest(7, "c0", "engine-x", tool.to_dict(), {}, 1000.0))  # connects
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", recording)
    for i in range(1, 4):
        dispatcher.dispatch(CallRequest(7, f"c{i}", "engine-x", tool.to_dict(), {}, 1000.0))
    import gc

    gc.collect()  # a dropped result handle would unsubscribe now
    assert commands == ["LPUSH"] * 3
