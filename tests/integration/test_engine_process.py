"""The engine process for real: Redis intake, the embedded model, the database and the channel layer."""

import asyncio
import os
import shutil
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from tests.helpers import wait_for
from tests.unit.test_consumer import connect
from webapp.runs.models import Task, TraceEvent
from webapp.runs.submit import submit_task

pytestmark = pytest.mark.django_db(transaction=True)


def submit(user, model: str, prompt: str = "Count from one to twenty in words.", max_tokens: int = 40) -> Task:
    return submit_task(user, prompt=prompt, model=model, max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=0)


async def receive_until_finish(communicator) -> list[dict]:
    received: list[dict] = []
    try:
        while not received or received[-1]["kind"] != "finish":
            message = await communicator.receive_json_from(timeout=60)
            received += message.get("events", [])
    finally:
        await communicator.disconnect()
    return received


async def test_tokens_reach_a_websocket_subscriber_live_and_in_order(start_engine, alice, test_model):
    await sync_to_async(start_engine)()
    task = await sync_to_async(submit)(alice, test_model)
    communicator, connected, _ = await connect(alice, task.pk)
    assert connected
    received = await receive_until_finish(communicator)

    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert received[0]["kind"] == "status" and received[0]["payload"]["status"] == "running"
    tokens = [e for e in received if e["kind"] == "token"]
    assert len(tokens) >= 5
    assert [e["payload"]["i"] for e in tokens] == list(range(1, len(tokens) + 1))
    finish = received[-1]["payload"]
    assert finish["status"] == "finished"
    assert finish["text"] == "".join(e["payload"]["text"] for e in tokens)
    for key in ("queue_wait_ms", "ttft_ms", "tokens", "tokens_per_s", "latency_ms"):
        assert finish["metrics"][key] is not None, key

    await sync_to_async(task.refresh_from_db)()
    assert task.status == "finished" and task.final_text == finish["text"]
    stored = await sync_to_async(lambda: list(TraceEvent.objects.filter(task=task).values_list("seq", flat=True)))()
    assert stored == [e["seq"] for e in received]


def test_several_tasks_are_interleaved(start_engine, alice, test_model):
    start_engine()
    tasks = [submit(alice, test_model, prompt=f"Write a poem about the number {i}.", max_tokens=24) for i in range(3)]
    for task in tasks:
        wait_for(lambda t=task: Task.objects.get(pk=t.pk).is_final, 90, f"task {task.pk}")
    events = list(TraceEvent.objects.filter(task__in=tasks, kind="token").order_by("task_id", "seq"))
    firsts = sorted(e.task_id for e in events if e.payload["i"] == 1)
    assert firsts == sorted(t.pk for t in tasks)
    for task in tasks:
        task.refresh_from_db()
        assert task.status == "finished", task.status_reason


def test_a_task_held_by_a_dead_engine_is_resumed_elsewhere_and_ends_as_it_would_have(start_engine, alice,
                                                                                     test_model):
    prompt = "Tell a very long story about a dragon."
    dying = start_engine("engine-doomed", ASYNCLM_HEARTBEAT_TTL="3")
    task = submit(alice, test_model, prompt=prompt, max_tokens=120)
    wait_for(lambda: TraceEvent.objects.filter(task=task, kind="token").count() >= 10, 60, "first tokens")
    dying.kill(sig=9)
    start_engine("engine-rescuer", ASYNCLM_HEARTBEAT_TTL="3")
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 60, "the task to end")
    task.refresh_from_db()
    assert task.status == "finished", task.status_reason
    assert task.engine_id == "engine-rescuer"
    events = list(TraceEvent.objects.filter(task=task).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    (resumed,) = [e for e in events if e.kind == "resumed" and e.payload.get("from") == "engine"]
    assert resumed.payload["engine"] == "engine-doomed" and resumed.payload["replayed_tokens"] >= 10
    tokens = [e for e in events if e.kind == "token"]
    assert [e.payload["i"] for e in tokens] == list(range(1, len(tokens) + 1))  # each token once, in order
    assert task.final_text == "".join(e.payload["text"] for e in tokens)
    # Greedy decoding: the same text an uninterrupted run of the task writes.
    reference = submit(alice, test_model, prompt=prompt, max_tokens=120)
    wait_for(lambda: Task.objects.get(pk=reference.pk).is_final, 60, "the reference task")
    reference.refresh_from_db()
    assert task.final_text == reference.final_text


def test_a_task_a_dead_engine_held_that_cannot_be_resumed_is_failed_with_the_reason(start_engine, alice,
                                                                                   test_model):
    dying = start_engine("engine-doomed", ASYNCLM_HEARTBEAT_TTL="3")
    task = submit(alice, test_model, prompt="Tell a very long story about a dragon.", max_tokens=2000)
    # Tokens stored after the one deleted below: with that one alone, its loss would leave no gap
    # (a record that just ends sooner), and the task would resume from its prompt.
    wait_for(lambda: TraceEvent.objects.filter(task=task, kind="token").count() >= 3, 60, "first tokens")
    dying.kill(sig=9)
    TraceEvent.objects.filter(task=task, kind="token").first().delete()  # a record with a gap
    Task.objects.filter(pk=task.pk).update(engine_id="engine-doomed")
    from engine.keys import trace_stream
    from webapp.core.redis import client as web_redis

    # Nothing to fill the gap from. A killed process's last writes may still be in its socket's
    # buffer and land after a first delete, so delete until the stream stays gone.
    for _ in range(3):
        web_redis().delete(trace_stream(task.pk))
        time.sleep(0.2)
    start_engine("engine-rescuer", ASYNCLM_HEARTBEAT_TTL="3")
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 30, "the task to be failed")
    task.refresh_from_db()
    assert task.status == "failed"
    assert "engine engine-doomed stopped while running this task" in task.status_reason
    assert "could not be resumed" in task.status_reason and "gaps" in task.status_reason
    assert "engine-rescuer" in task.status_reason
    assert task.final_text  # what had been streamed is kept


def test_a_queued_task_claimed_by_a_dead_engine_runs_elsewhere(start_engine, alice, test_model, redis_client):
    from engine.intake import Intake

    task = submit(alice, test_model, max_tokens=8)
    Intake(redis_client).claim("engine-ghost")  # claimed, never started, its engine never beats
    start_engine("engine-rescuer")
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 60, "the task to finish")
    task.refresh_from_db()
    assert task.status == "finished" and task.engine_id == "engine-rescuer"


def test_a_model_file_that_fails_its_hash_fails_the_task_clearly(start_engine, alice, tmp_path, test_model):
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(
        settings.ASYNCLM_MODEL_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf", models / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    bad = models / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    with open(settings.ASYNCLM_MODEL_DIR / bad.name, "rb") as src, open(bad, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.seek(1000)
        dst.write(b"corrupted")
    start_engine(ASYNCLM_MODEL_DIR=str(models))
    task = submit(alice, "qwen2.5-coder-0.5b")
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 60, "the task to fail")
    task.refresh_from_db()
    assert task.status == "failed"
    assert "Refusing to load" in task.status_reason and "does not match the pinned" in task.status_reason
    ok = submit(alice, test_model, max_tokens=4)
    wait_for(lambda: Task.objects.get(pk=ok.pk).is_final, 60, "the good task")
    assert Task.objects.get(pk=ok.pk).status == "finished"


def test_the_engine_refuses_to_start_with_a_bad_model_file(tmp_path, redis_client):
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env

    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"not a model")
    result = subprocess.run(
        [sys.executable, "manage.py", "run_engine", "--preload", "smollm2-135m"],
        cwd=ROOT,
        env=subprocess_env(ASYNCLM_MODEL_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Refusing to load" in result.stderr and "smollm2-135m" in result.stderr


def test_the_engine_says_when_redis_is_unreachable(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env

    env = subprocess_env()
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    env["DJANGO_SETTINGS_MODULE"] = "webapp.settings.local"
    env["ASYNCLM_VAR_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "manage.py", "run_engine", "--redis-wait", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Redis at redis://127.0.0.1:1/0 is not reachable" in result.stderr


async def test_a_subscriber_joining_mid_task_sees_no_gap_and_no_duplicate(start_engine, alice, test_model):
    await sync_to_async(start_engine)()
    task = await sync_to_async(submit)(alice, test_model, "Write a long list of fruits.", 120)
    await asyncio.sleep(0)
    await sync_to_async(wait_for)(
        lambda: TraceEvent.objects.filter(task_id=task.pk, kind="token").count() >= 10, 60, "some tokens"
    )
    communicator, connected, _ = await connect(alice, task.pk)
    assert connected
    received = await receive_until_finish(communicator)
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
