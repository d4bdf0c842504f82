"""Following a task's trace outside a websocket (webapp/runs/follow.py), on the real Redis and
channel layer."""

import asyncio

import pytest
import redis
from channels.layers import get_channel_layer

from engine.messages import trace_group
from webapp.runs.follow import TraceFollower
from webapp.runs.models import Task


def event(task_id: int, seq: int, kind: str) -> dict:
    return {"task_id": task_id, "seq": seq, "t_ms": float(seq), "kind": kind, "payload": {}}


@pytest.mark.django_db(transaction=True)
def test_it_takes_a_read_timeout_from_redis_during_an_idle_wait_for_the_idle_wait(alice, redis_client,
                                                                                    monkeypatch):
    """redis-py can report asyncio's cancellation of a blocking read (the follower's idle wait)
    as its own read timeout: the request must go on, not end as "Redis unreachable"."""
    task = Task.objects.create(owner=alice, prompt="p", model="m", status="running")
    layer = get_channel_layer()
    real_receive = layer.receive
    raised = []

    async def receive(channel):
        if not raised:
            raised.append(channel)
            raise redis.exceptions.TimeoutError("Timeout reading from 127.0.0.1:6379")
        return await real_receive(channel)

    monkeypatch.setattr(layer, "receive", receive)

    async def follow() -> list:
        seen = []
        async with TraceFollower(task.pk, idle_s=0.2) as trace:
            async def send() -> None:
                await asyncio.sleep(0.5)
                await layer.group_send(trace_group(task.pk), {"type": "trace.events", "events": [
                    event(task.pk, 1, "token"), event(task.pk, 2, "finish")]})

            sender = asyncio.create_task(send())
            async for e in trace.events():
                seen.append(None if e is None else e["kind"])
            await sender
        return seen

    seen = asyncio.run(follow())
    assert raised  # the timeout happened, and the follower went on to the end of the trace
    assert [k for k in seen if k is not None] == ["token", "finish"]
