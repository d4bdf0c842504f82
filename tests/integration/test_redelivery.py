"""Exactly one interrupt per call, whatever the execution side does: a worker process killed
mid-call is redelivered, and a duplicate report is dropped. The engine runs the real model; the
tokens it emits are forced from a script so the calls happen regardless of what it would write."""

import os
import signal
import time

import pytest

from engine.intake import Intake
from engine.keys import inbox_stream
from engine.messages import Budgets, CallReport, TaskSubmission
from engine.tools import ToolSpec
from tests.helpers import wait_for
from webapp.runs.models import Task, TraceEvent

pytestmark = pytest.mark.django_db(transaction=True)

SLEEP = ToolSpec("sleep", "sleeps", {"type": "object", "properties": {"seconds": {"type": "number"}}},
                 timeout_s=8.0, kind="python", config={"entry_point": "workers.toolbox:sleep"})
FILLER = " and the model keeps writing while the call runs" * 30


def forced_task(user, redis_client, script: str) -> Task:
    task = Task.objects.create(owner=user, prompt="(forced)", model="smollm2-135m", max_tokens=2000,
                               tools=[SLEEP.to_dict()])
    Intake(redis_client).submit(TaskSubmission(task.pk, task.model, task.prompt, 2000, time.time(),
                                               tools=[SLEEP.to_dict()], budgets=Budgets(),
                                               forced_text=script))
    return task


def kinds(task, kind, call_id="s1"):
    return [e for e in TraceEvent.objects.filter(task=task, kind=kind).order_by("seq")
            if e.payload.get("call_id") == call_id or call_id in e.payload.get("calls", [])]


def test_a_call_whose_worker_process_is_killed_is_redelivered_once(start_engine, celery_worker_proc, alice,
                                                                   redis_client):
    engine = start_engine("engine-redelivery")
    task = forced_task(alice, redis_client, "[CALL] s1 [HEAD] sleep(seconds=1.5) [END]" + FILLER + FILLER)
    wait_for(lambda: kinds(task, "call_started"), 60, "the call to start")
    worker_pid = int(kinds(task, "call_started")[0].payload["worker"].rsplit("/", 1)[1])
    os.kill(worker_pid, signal.SIGKILL)  # the pool child running the call, not the whole worker
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 90, "the task to end")
    assert len(kinds(task, "call_started")) == 2, engine.output()  # redelivered to a new child
    (result,) = kinds(task, "call_result")
    assert result.payload["ok"], result.payload
    assert len(kinds(task, "interrupt_injected")) == 1


def test_a_forced_task_ends_once_its_script_is_used_up_and_the_result_is_in(start_engine, celery_worker_proc,
                                                                              alice, redis_client):
    # The script ends long before the result: the task waits for it, the model sees it, and the
    # task ends there, whatever the model would have gone on to write.
    start_engine("engine-script-end")
    task = forced_task(alice, redis_client, "[CALL] s1 [HEAD] sleep(seconds=2) [END] waiting")
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 60, "the task to end")
    task.refresh_from_db()
    assert task.status == "finished"
    assert task.final_text.startswith("[CALL] s1 [HEAD] sleep(seconds=2) [END] waiting")
    assert task.final_text.rstrip().endswith('[INTR] s1 [HEAD] {"slept":2} [END]')
    assert len(kinds(task, "interrupt_injected")) == 1
    events = list(TraceEvent.objects.filter(task=task).order_by("seq"))
    assert events[-1].kind == "finish" and events[-1].payload["finish_reason"] == "stop"
    injected_at = next(e.seq for e in events if e.kind == "interrupt_injected")
    assert not [e for e in events if e.kind == "token" and e.seq > injected_at]


def test_a_duplicate_report_gives_one_interrupt(start_engine, celery_worker_proc, alice, redis_client):
    start_engine("engine-duplicates")
    task = forced_task(alice, redis_client, "[CALL] s1 [HEAD] sleep(seconds=0.2) [END]" + FILLER + FILLER)
    wait_for(lambda: kinds(task, "interrupt_injected"), 60, "the first injection")
    finished = kinds(task, "call_finished")[0].payload
    duplicate = CallReport(task.pk, "s1", "finished", finished["worker"], time.time(), ok=True, result={"again": 1})
    redis_client.xadd(inbox_stream("engine-duplicates"), {"r": duplicate.to_json()})
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 90, "the task to end")
    assert len(kinds(task, "late_result")) == 1
    assert len(kinds(task, "interrupt_injected")) == 1
    assert "again" not in Task.objects.get(pk=task.pk).final_text


def test_cancelling_a_running_task_stops_it_and_revokes_its_queued_calls(start_engine, celery_worker_proc, alice,
                                                                       redis_client, client):
    from django.urls import reverse

    start_engine("engine-cancel")
    # Two slow calls on a 2-process worker, then a third that can only wait in the queue.
    script = ("[CALL] s1 [HEAD] sleep(seconds=4) [END][CALL] s2 [HEAD] sleep(seconds=4) [END]"
              "[CALL] s3 [HEAD] sleep(seconds=0.1) [END]" + FILLER * 4)
    task = forced_task(alice, redis_client, script)
    wait_for(lambda: kinds(task, "call_dispatched", "s3"), 60, "the third call to be dispatched")
    worker_log = celery_worker_proc.log_path
    finished_before = worker_log.read_text(errors="replace").count("succeeded in")
    client.force_login(alice)
    response = client.post(reverse("task_cancel", args=[task.pk]), follow=True)
    assert "cancel requested" in response.content.decode()
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 30, "the task to stop")
    task.refresh_from_db()
    assert task.status == "cancelled" and task.status_reason == "cancelled by the user"
    finish = TraceEvent.objects.get(task=task, kind="finish").payload
    assert "s3" in finish["pending_calls"]
    # s1 and s2 finish on the worker (its log says so; their reports are dropped: the task is over).
    # Had s3 not been revoked, one of the two freed processes would have taken it by then.
    wait_for(lambda: worker_log.read_text(errors="replace").count("succeeded in") >= finished_before + 2, 30,
             "s1 and s2 to finish on the worker")
    wait_for(lambda: "Discarding revoked task" in worker_log.read_text(errors="replace"), 10,
             "the worker to discard s3")
    assert not kinds(task, "call_started", "s3")
    assert TraceEvent.objects.filter(task=task).order_by("-seq").first().kind == "finish"  # late results dropped


def test_cancelling_a_queued_task_needs_no_engine(alice, client, redis_client):
    from django.urls import reverse

    task = Task.objects.create(owner=alice, prompt="p", model="smollm2-135m")
    client.force_login(alice)
    client.post(reverse("task_cancel", args=[task.pk]))
    task.refresh_from_db()
    assert task.status == "cancelled"


def test_another_user_cannot_cancel(alice, bob, client, redis_client):
    from django.urls import reverse

    task = Task.objects.create(owner=alice, prompt="p", model="smollm2-135m")
    client.force_login(bob)
    assert client.post(reverse("task_cancel", args=[task.pk])).status_code == 404
    assert Task.objects.get(pk=task.pk).status == "queued"
