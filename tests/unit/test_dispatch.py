"""The engine's Celery dispatcher: what goes with each call, and what reaches the broker."""

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

from engine.messages import CallRequest
from engine.tools import ToolSpec
from webapp.runs import dispatch
from webapp.runs.toolqueue import ToolQueue

TOOL = ToolSpec("f", "", {"type": "object"}, timeout_s=3.0)


def request(call_id: str, tool: ToolSpec = TOOL) -> CallRequest:
    return CallRequest(7, call_id, "engine-x", tool.to_dict(), {"a": 1}, 1000.0)


def popped(redis_client, queue: str) -> dict:
    return json.loads(redis_client.rpop(queue))


def test_it_writes_the_envelope_celerys_send_task_writes(redis_client):
    """Built with Celery's and kombu's own functions for a task's first message, copied and filled
    in for the next ones; both compared here with what `send_task` pushes for the same call (only
    the delivery tag and the expiry's wall time may differ)."""
    queue = f"tools-test-{uuid.uuid4().hex[:8]}"
    args = [request("c1").to_dict()]
    options = {"expires": 5.0, "time_limit": 4.0, "soft_time_limit": 3.0, "argsrepr": "(f: task 7, call c1)"}
    dispatch.app.send_task(dispatch.RUN_TOOL, args=args, task_id="asynclm-7-c1", queue=queue, ignore_result=True,
                           kwargsrepr="{}", **options)
    theirs = popped(redis_client, queue)
    first, copied = ToolQueue(dispatch.app, queue), ToolQueue(dispatch.app, queue)
    # Another call with other limits comes first: nothing of it may remain in the next message.
    other = CallRequest(8, "c9", "engine-y", TOOL.to_dict(), {"b": [2]}, 5.0, order=3).to_dict()
    copied.push([copied.message(dispatch.RUN_TOOL, "asynclm-8-c9", [other], expires_s=70.0, time_limit=61.0,
                                soft_time_limit=60.0, argsrepr="(f: task 8, call c9)")])
    popped(redis_client, queue)
    tags = []
    for tools in (first, copied):
        tools.push([tools.message(dispatch.RUN_TOOL, "asynclm-7-c1", args, expires_s=5.0, time_limit=4.0,
                                  soft_time_limit=3.0, argsrepr=options["argsrepr"])])
        ours = popped(redis_client, queue)
        for message in (theirs, ours):
            tags.append(message["properties"].pop("delivery_tag", None))
            if "expires" in message["headers"]:
                expires = datetime.fromisoformat(message["headers"].pop("expires"))
                assert abs(expires - datetime.now(UTC) - timedelta(seconds=5)) < timedelta(seconds=2)
            if isinstance(message["body"], str):
                message["body"] = json.loads(base64.b64decode(message["body"]))
        assert ours == theirs
    assert len({t for t in tags if t}) == 3  # theirs, and each of ours: a delivery tag per message


def test_a_call_carries_its_limits_and_expires_once_the_engine_has_given_up_on_it(redis_client):
    dispatch.CeleryDispatcher().dispatch(request("c1"))
    message = popped(redis_client, "tools")
    headers = message["headers"]
    assert headers["task"] == dispatch.RUN_TOOL and headers["id"] == "asynclm-7-c1"
    assert headers["timelimit"] == [4.0, 3.0]  # hard, soft
    expires = datetime.fromisoformat(headers["expires"]) - datetime.now(UTC)
    assert timedelta(seconds=3) < expires <= timedelta(seconds=5)  # timeout 3 s + 2 s of grace
    (args, kwargs, _) = json.loads(base64.b64decode(message["body"]))
    assert CallRequest(**args[0]) == request("c1") and kwargs == {}


def test_a_steps_calls_go_to_the_broker_in_one_command_in_order_and_subscribe_to_no_result(
        monkeypatch, redis_client):
    """Results come back on the engine's inbox: a dispatch must not also subscribe to Celery's
    result channel for the call, and sync_parallel's batch is one round trip, not one per call."""
    import redis.connection

    commands = []
    send = redis.connection.AbstractConnection.send_command

    def recording(self, *args, **options):
        commands.append(str(args[0]).upper())
        return send(self, *args, **options)

    dispatcher = dispatch.CeleryDispatcher()
    dispatcher.dispatch(request("c0"))  # connects
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", recording)
    assert dispatcher.dispatch_all([request(f"c{i}") for i in range(1, 4)]) == []
    import gc

    gc.collect()  # a dropped result handle would unsubscribe now
    assert commands == ["LPUSH"]
    ids = [popped(redis_client, "tools")["headers"]["id"] for _ in range(4)]
    assert ids == [f"asynclm-7-c{i}" for i in range(4)]  # the order they were written in


def test_a_broker_that_refuses_the_batch_fails_each_of_its_calls_with_the_reason(monkeypatch):
    dispatcher = dispatch.CeleryDispatcher()

    def down(messages):
        raise ConnectionError("broker down")

    monkeypatch.setattr(dispatcher.queue, "push", down)
    failed = dispatcher.dispatch_all([request("c1"), request("c2")])
    assert [(r.call_id, str(exc)) for r, exc in failed] == [("c1", "broker down"), ("c2", "broker down")]


def test_a_connection_the_broker_dropped_since_the_last_call_is_replaced_and_the_call_goes(redis_client):
    dispatcher = dispatch.CeleryDispatcher()
    dispatcher.dispatch(request("c0"))
    own = dispatcher.queue.channel.client.client_id()  # the pool's one connection, idle again
    assert redis_client.client_kill_filter(_id=own) == 1  # as a Redis restart would drop it
    assert dispatcher.dispatch_all([request("c1")]) == []
    ids = [popped(redis_client, "tools")["headers"]["id"] for _ in range(2)]
    assert ids == ["asynclm-7-c0", "asynclm-7-c1"]
