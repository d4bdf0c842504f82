"""The trace websocket through the real ASGI stack (auth, origin check) and the real channel layer."""

import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from engine.keys import trace_stream
from engine.messages import trace_group
from webapp.asgi import application
from webapp.runs.models import Task, TraceEvent

pytestmark = pytest.mark.django_db(transaction=True)


def session_headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return [(b"cookie", cookie.encode()), (b"origin", b"http://127.0.0.1:8000")]


async def connect(user, task_id: int, after: int = 0):
    headers = await sync_to_async(session_headers)(user) if user else [(b"origin", b"http://127.0.0.1:8000")]
    communicator = WebsocketCommunicator(application, f"/ws/tasks/{task_id}/?after={after}", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


def event(task_id, seq, text):
    return {"task_id": task_id, "seq": seq, "t_ms": float(seq), "kind": "token", "payload": {"text": text},
            "version": 1}


@pytest.fixture
def task(alice):
    return Task.objects.create(owner=alice, prompt="p", model="m", status="running")


async def received_seqs(communicator) -> list[int]:
    seqs = []
    while not await communicator.receive_nothing(timeout=0.3):
        seqs += [e["seq"] for e in (await communicator.receive_json_from())["events"]]
    return seqs


async def test_it_refuses_anonymous_clients(task, redis_client):
    _, connected, _ = await connect(None, task.pk)
    assert not connected


async def test_it_refuses_another_users_task(task, bob, redis_client):
    _, connected, _ = await connect(bob, task.pk)
    assert not connected


async def test_it_catches_up_from_storage_and_the_live_buffer_then_follows_live(task, alice, redis_client):
    # 1-3 stored in the database; 3-5 still only in the Redis catch-up stream (3 is in both).
    await sync_to_async(TraceEvent.objects.bulk_create)(
        [TraceEvent(task=task, seq=i, t_ms=i, kind="token", payload={"text": str(i)}) for i in (1, 2, 3)])
    for i in (3, 4, 5):
        redis_client.xadd(trace_stream(task.pk), {"e": json.dumps(event(task.pk, i, str(i)))})
    communicator, connected, _ = await connect(alice, task.pk)
    assert connected
    layer = get_channel_layer()
    # A live message that repeats 5 and brings 6: only 6 is new.
    await layer.group_send(trace_group(task.pk), {"type": "trace.events",
                                                 "events": [event(task.pk, 5, "5"), event(task.pk, 6, "6")]})
    assert await received_seqs(communicator) == [1, 2, 3, 4, 5, 6]
    await communicator.disconnect()


async def test_a_reconnecting_client_resumes_after_its_last_event(task, alice, redis_client):
    await sync_to_async(TraceEvent.objects.bulk_create)(
        [TraceEvent(task=task, seq=i, t_ms=i, kind="token", payload={"text": str(i)}) for i in range(1, 6)])
    communicator, connected, _ = await connect(alice, task.pk, after=3)
    assert connected
    assert await received_seqs(communicator) == [4, 5]
    await communicator.disconnect()
