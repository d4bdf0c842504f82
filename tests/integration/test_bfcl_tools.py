"""BFCL's stateful classes through real Celery worker processes and the real engine: state kept
per instance in Redis whichever process runs the next call, instances kept apart, and calls on
one instance run in the order the model issued them."""

import os
import signal
import time

import pytest

from engine.intake import Intake
from engine.messages import Budgets, TaskSubmission
from tests.helpers import wait_for
from tests.integration.test_tool_execution import call
from webapp.runs.models import Task, TraceEvent
from webapp.tools.bfcl import import_bfcl, instance_specs
from webapp.tools.models import Tool
from workers.instances import instance_key

pytestmark = pytest.mark.django_db(transaction=True)

FILLER = " and the model keeps writing while the calls run" * 40


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_of(report) -> int:
    return int(report.worker.rsplit("/", 1)[1])


def test_state_survives_between_calls_run_by_two_worker_processes(celery_worker_proc, redis_client):
    import_bfcl([], ["GorillaFileSystem"])
    (mkdir, ls) = (Tool.objects.get(pack__name="bfcl/GorillaFileSystem", name=n).spec(instance="e1")
                   for n in ("mkdir", "ls"))
    first = call(redis_client, mkdir, {"dir_name": "alpha"}, call_id="k1")["finished"]
    assert first.ok, first.error
    os.kill(pid_of(first), signal.SIGKILL)  # that process is gone: the next call runs in another one
    wait_for(lambda: not _exists(pid_of(first)), 10, "the killed process to be reaped")
    second = call(redis_client, ls, {}, call_id="k2", order=1)["finished"]
    assert pid_of(second) != pid_of(first)
    assert second.ok and second.result == {"current_directory_content": ["alpha"]}


def test_the_admin_test_call_of_a_bfcl_tool_uses_a_fresh_instance(celery_worker_proc, redis_client):
    from webapp.tools.testcall import run_test_call

    import_bfcl([], ["GorillaFileSystem"])
    mkdir = Tool.objects.get(pack__name="bfcl/GorillaFileSystem", name="mkdir").spec()
    for _ in range(2):  # the same name twice: each call starts from the default scenario
        trial = run_test_call(mkdir, {"dir_name": "alpha"}, wait_s=30)
        assert trial.ok, trial.error
    assert not list(redis_client.scan_iter(match=instance_key(0, "*")))


def test_a_task_with_two_instances_orders_their_calls_and_keeps_them_apart(start_engine, celery_worker_proc, alice,
                                                                          redis_client):
    import_bfcl([], ["GorillaFileSystem"])
    tools, states = instance_specs({"e1": {"class": "GorillaFileSystem"},
                                    "e2": {"class": "GorillaFileSystem",
                                           "initial_config": {"root": {"w": {"type": "directory", "contents": {
                                               "notes.txt": {"type": "file", "content": "hi"}}}}}}})
    tools = [t for t in tools if t["name"].split(".")[1] in ("mkdir", "ls")]  # a short prompt
    script = ('[CALL] a [HEAD] e1.mkdir(dir_name="alpha") [END][CALL] b [HEAD] e1.ls() [END]'
              "[CALL] c [HEAD] e2.ls() [END]" + FILLER)
    start_engine("engine-bfcl")
    task = Task.objects.create(owner=alice, prompt="(forced)", model="smollm2-135m", max_tokens=2000, tools=tools,
                               instances=states)
    Intake(redis_client).submit(TaskSubmission(task.pk, task.model, task.prompt, 2000, time.time(), tools=tools,
                                               budgets=Budgets(), forced_text=script, instances=states))
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 120, "the task to end")
    events = list(TraceEvent.objects.filter(task=task).order_by("seq"))
    results = {e.payload["call_id"]: e for e in events if e.kind == "call_result"}
    assert set(results) == {"a", "b", "c"}, [(e.kind, e.payload) for e in events if e.kind != "token"]
    assert all(r.payload["ok"] for r in results.values()), [r.payload for r in results.values()]
    assert results["b"].payload["injected"] == '{"current_directory_content":["alpha"]}'
    assert results["c"].payload["injected"] == '{"current_directory_content":["notes.txt"]}'
    dispatched = {e.payload["call_id"]: e.seq for e in events if e.kind == "call_dispatched"}
    assert results["a"].seq < dispatched["b"]  # b waited for a
    waits = [e.payload for e in events if e.kind == "call_waiting"]
    assert waits == [{"call_id": "b", "on": ["a"]}] or waits == []  # never c: e2 does not wait for e1
    assert "c" in dispatched
