"""Sub-agents through the real processes: an engine that may decode one task at a time
(ASYNCLM_ENGINE_MAX_ACTIVE=1), a Celery worker, Redis. The parent's call of an `agent` tool
starts a child task; the parent parks on [TRAP] and so frees the slot the child needs; the
child's answer is injected into the parent as the call's result. Both run on the simulated
decoder (a plan in each prompt), so the calls happen whatever a small model would write."""

import json

import pytest

from tests.helpers import wait_for
from webapp.runs.models import Task, TraceEvent
from webapp.runs.submit import submit_task
from webapp.tools.models import Tool, ToolPack

pytestmark = pytest.mark.django_db(transaction=True)

CHILD_PLAN = {"calls": [], "final": "Sunny, 21 C.", "token_ms": 5}
HELPER_CONFIG = {"model": "simulated", "mode": "async", "pack": "", "max_wall_s": 60, "max_tokens": 64,
                 "instruction": f"You answer weather questions.\n[plan] {json.dumps(CHILD_PLAN)}\n"}


@pytest.fixture
def helper(db):
    pack = ToolPack.objects.create(name="agents")
    tool = Tool.objects.create(pack=pack, name="ask_helper", description="Delegate a sub-question.", kind="agent",
                               est_latency_ms=500,
                               parameters={"type": "object", "properties": {"task": {"type": "string"}},
                                           "required": ["task"]}, config=HELPER_CONFIG)
    return tool


def parent_prompt(calls: list[dict]) -> str:
    plan = {"calls": calls, "final": "The helper says: done.", "token_ms": 5, "wait": "trap"}
    return f"Ask the helper.\n[plan] {json.dumps(plan)}\n"


def test_a_parent_on_a_one_slot_engine_gets_its_sub_agents_answer(start_engine, celery_worker_proc, alice, helper):
    start_engine("engine-agents", preload="simulated", ASYNCLM_ENGINE_MAX_ACTIVE="1")
    call = {"id": "c1", "call": "ask_helper(task='Weather in Paris?')", "e": 500, "after": None}
    parent = submit_task(alice, prompt=parent_prompt([call]), model="simulated", mode="async", max_tokens=200,
                         tools=[helper.spec().to_dict()])
    wait_for(lambda: Task.objects.get(pk=parent.pk).is_final, 60, "the parent to end")
    parent.refresh_from_db()
    assert parent.status == "finished", parent.status_reason
    (child,) = parent.children.all()
    assert child.status == "finished" and child.owner == alice and child.final_text == "Sunny, 21 C."
    result = TraceEvent.objects.get(task=parent, kind="call_result")
    assert result.payload["ok"] and "Sunny, 21 C." in result.payload["injected"]
    injected = TraceEvent.objects.get(task=parent, kind="interrupt_injected")
    parked = TraceEvent.objects.filter(task=parent, kind="trap").first()
    assert parked is not None and parked.seq < injected.seq  # it waited parked, not holding the slot
    assert child.started_at is not None and child.started_at < Task.objects.get(pk=parent.pk).finished_at


def test_a_parent_and_its_sub_agents_run_on_two_engines(start_engine, celery_worker_proc, alice, helper):
    # Engine A may hold one task (the parent), so both children go to engine B, while A's parent
    # keeps decoding: its second call is written while the first child runs.
    start_engine("engine-parent", preload="simulated", ASYNCLM_ENGINE_MAX_ACTIVE="1", ASYNCLM_ENGINE_MAX_HELD="1")
    calls = [{"id": f"c{i}", "call": f"ask_helper(task='Weather in {city}?')", "e": 500, "after": None}
             for i, city in ((1, "Paris"), (2, "Rome"))]
    parent = submit_task(alice, prompt=parent_prompt(calls), model="simulated", mode="async", max_tokens=200,
                         tools=[helper.spec().to_dict()])
    wait_for(lambda: Task.objects.get(pk=parent.pk).engine_id == "engine-parent", 30, "the parent to start")
    start_engine("engine-children", preload="simulated")
    wait_for(lambda: Task.objects.get(pk=parent.pk).is_final, 60, "the parent to end")
    parent.refresh_from_db()
    assert parent.status == "finished", parent.status_reason
    assert parent.engine_id == "engine-parent"
    children = list(parent.children.order_by("parent_call_id"))
    assert [(c.parent_call_id, c.status, c.engine_id) for c in children] == [
        ("c1", "finished", "engine-children"), ("c2", "finished", "engine-children")]
    results = TraceEvent.objects.filter(task=parent, kind="call_result")
    assert sorted(r.payload["call_id"] for r in results if r.payload["ok"]) == ["c1", "c2"]
    first_dispatch = TraceEvent.objects.filter(task=parent, kind="call_dispatched").order_by("seq").first()
    second_call = TraceEvent.objects.get(task=parent, kind="call_decoded", payload__call_id="c2")
    assert first_dispatch.payload["call_id"] == "c1" and first_dispatch.seq < second_call.seq


def test_a_sub_agent_that_fails_gives_the_parent_an_error_result(start_engine, celery_worker_proc, alice, helper):
    helper.config = {**HELPER_CONFIG, "model": "qwen2.5-coder-1.5b"}  # not loaded here: the child fails
    helper.save()
    start_engine("engine-agents-fail", preload="simulated")
    call = {"id": "c1", "call": "ask_helper(task='Weather in Oslo?')", "e": 500, "after": None}
    parent = submit_task(alice, prompt=parent_prompt([call]), model="simulated", mode="async", max_tokens=200,
                         tools=[helper.spec().to_dict()])
    wait_for(lambda: Task.objects.get(pk=parent.pk).is_final, 60, "the parent to end")
    (child,) = Task.objects.get(pk=parent.pk).children.all()
    assert child.status == "failed"
    result = TraceEvent.objects.get(task=parent, kind="call_result")
    assert not result.payload["ok"] and f"sub-agent task {child.pk} failed" in result.payload["injected"]


def test_a_sub_agent_whose_engine_dies_is_resumed_and_its_parent_gets_one_result(start_engine, celery_worker_proc,
                                                                                  alice, helper):
    # The child writes for about 5 s, so it can be cut mid-decode; the parent waits parked.
    long_plan = {"calls": [], "final": "It will be sunny all week. " * 8, "token_ms": 50}
    helper.config = {**HELPER_CONFIG, "instruction": f"You answer weather questions.\n[plan] {json.dumps(long_plan)}\n"}
    helper.save()
    first = start_engine("engine-agents-a", preload="simulated", ASYNCLM_HEARTBEAT_TTL="3")
    call = {"id": "c1", "call": "ask_helper(task='Weather this week?')", "e": 500, "after": None}
    parent = submit_task(alice, prompt=parent_prompt([call]), model="simulated", mode="async", max_tokens=200,
                         tools=[helper.spec().to_dict()])
    wait_for(lambda: Task.objects.filter(parent=parent).exists(), 30, "the child task")
    child = Task.objects.get(parent=parent)
    wait_for(lambda: TraceEvent.objects.filter(task=child, kind="token").count() >= 5, 30, "the child's first tokens")
    start_engine("engine-agents-b", preload="simulated", ASYNCLM_HEARTBEAT_TTL="3")
    first.kill(sig=9)  # the parent's engine too: both are taken over
    wait_for(lambda: Task.objects.get(pk=parent.pk).is_final, 90, "the parent to end")
    parent.refresh_from_db()
    child.refresh_from_db()
    assert parent.status == "finished", parent.status_reason
    assert child.status == "finished" and "sunny all week" in child.final_text
    assert TraceEvent.objects.filter(task=child, kind="resumed").exists()
    (result,) = TraceEvent.objects.filter(task=parent, kind="call_result")
    assert result.payload["ok"] and "sunny all week" in result.payload["injected"]
