"""Sub-agents (tools of kind `agent`), on the web side: a call becomes a child task of the same
owner; limits and bad calls become error results for the parent; the child's end becomes the
parent's result; a parent's end cancels its children. Reports go through the real Redis into
the parent's engine inbox."""

import time

import pytest

from engine.intake import Intake
from engine.keys import inbox_stream
from engine.messages import CallReport, CallRequest
from webapp.runs.agents import AGENT_GRACE_S, start_child
from webapp.runs.models import Task
from webapp.runs.submit import cancel_task, on_task_final
from webapp.tools.models import Tool, ToolPack

pytestmark = pytest.mark.django_db

ENGINE = "engine-agents-test"
CONFIG = {"model": "smollm2-135m", "mode": "async", "pack": "demo", "instruction": "You are a travel helper.",
          "max_wall_s": 60, "max_tokens": 100}


@pytest.fixture
def helper_tool(demo_pack):
    pack = ToolPack.objects.create(name="agents")
    return Tool.objects.create(pack=pack, name="ask_helper", description="Delegate a sub-question.", kind="agent",
                               parameters={"type": "object", "properties": {"task": {"type": "string"}},
                                           "required": ["task"]}, config=CONFIG)


@pytest.fixture
def parent(alice, redis_client):
    return Task.objects.create(owner=alice, prompt="plan a trip", model="smollm2-135m", status="running",
                               engine_id=ENGINE)


def call(parent, tool, call_id="c1", **args) -> CallRequest:
    return CallRequest(parent.pk, call_id, ENGINE, tool.spec().to_dict(), args or {"task": "Weather in Paris?"},
                       time.time())


def reports(redis_client) -> list[CallReport]:
    return [CallReport.from_json(fields[b"r"]) for _, fields in redis_client.xrange(inbox_stream(ENGINE))]


def test_it_starts_a_child_task_of_the_same_owner_and_queues_it(parent, helper_tool, redis_client):
    start_child(call(parent, helper_tool))
    (child,) = parent.children.all()
    assert child.owner == parent.owner and child.depth == 1 and child.parent_call_id == "c1"
    assert child.prompt == "You are a travel helper.\n\nWeather in Paris?" and child.model == "smollm2-135m"
    demo = set(ToolPack.objects.get(name="demo").tools.values_list("name", flat=True))
    assert {t["name"] for t in child.tools} == demo
    assert child.max_wall_s == 60 and child.max_tokens == 100 and child.status == "queued"
    claimed = Intake(redis_client).claim("engine-x", count=5)
    assert [c.submission.task_id for c in claimed] == [child.pk]
    start_child(call(parent, helper_tool))  # a redelivered call starts nothing more
    assert parent.children.count() == 1 and reports(redis_client) == []


def test_the_calls_timeout_is_the_childs_budget_plus_a_grace(helper_tool):
    assert helper_tool.spec().timeout_s == 60 + AGENT_GRACE_S


@pytest.mark.parametrize("setup, args, error_type, message", [
    ("deep", None, "agent_limit", "nest 2 deep"),
    ("wide", None, "agent_limit", "at most 8 sub-agents"),
    ("none", {"task": "  "}, "invalid_arguments", "non-empty `task`"),
    ("quota", None, "agent_limit", "queued or running tasks"),
])
def test_limits_and_bad_calls_are_error_results_for_the_parent(parent, helper_tool, redis_client, settings, setup,
                                                               args, error_type, message):
    if setup == "deep":
        Task.objects.filter(pk=parent.pk).update(depth=2)
        parent.refresh_from_db()
    if setup == "wide":
        for i in range(8):
            Task.objects.create(owner=parent.owner, prompt="x", model="m", parent=parent, parent_call_id=f"x{i}",
                                status="finished")
    if setup == "quota":
        settings.ASYNCLM_MAX_OPEN_TASKS_PER_USER = 1  # the parent itself is running
    start_child(call(parent, helper_tool, **(args or {})))
    (rep,) = reports(redis_client)
    assert rep.task_id == parent.pk and rep.call_id == "c1" and not rep.ok
    assert rep.error_type == error_type and message in rep.error
    assert parent.children.exclude(parent_call_id__startswith="x").count() == 0


def test_a_childs_answer_or_failure_is_the_parents_result(parent, helper_tool, redis_client):
    start_child(call(parent, helper_tool, "c1"))
    start_child(call(parent, helper_tool, "c2", task="Hotels in Paris?"))
    done, broken = parent.children.order_by("parent_call_id")
    Task.objects.filter(pk=done.pk).update(status="finished", final_text="Sunny, 21 C.")
    Task.objects.filter(pk=broken.pk).update(status="failed", status_reason="model unavailable")
    on_task_final(done.pk)
    on_task_final(broken.pk)
    first, second = reports(redis_client)
    assert (first.call_id, first.ok, first.result) == ("c1", True, "Sunny, 21 C.")
    assert (second.call_id, second.ok, second.error_type) == ("c2", False, "agent_failed")
    assert "model unavailable" in second.error and f"task {broken.pk}" in second.error


def test_a_parents_end_cancels_its_children_and_a_cancelled_queued_child_reports(parent, helper_tool, redis_client):
    start_child(call(parent, helper_tool, "c1"))
    (child,) = parent.children.all()
    cancel_task(child, "cancelled by the user")
    (rep,) = reports(redis_client)
    assert rep.call_id == "c1" and not rep.ok and "cancelled" in rep.error
    start_child(call(parent, helper_tool, "c2"))
    Task.objects.filter(pk=parent.pk).update(status="finished")
    on_task_final(parent.pk)
    second = parent.children.get(parent_call_id="c2")
    assert second.status == "cancelled" and str(parent.pk) in second.status_reason
    assert len(reports(redis_client)) == 1  # nothing goes to a parent that is over


def test_the_registry_checks_an_agent_tools_config(helper_tool):
    from django.core.exceptions import ValidationError

    helper_tool.full_clean()
    for bad, words in [({"model": "nope"}, "Unknown model"), ({"pack": "nope"}, "no tool pack"),
                       ({"mode": "fast"}, "mode must be"), ({"shell": "rm"}, "unknown agent settings")]:
        helper_tool.config = {**CONFIG, **bad}
        with pytest.raises(ValidationError, match=words):
            helper_tool.full_clean()


def test_the_task_pages_link_parent_and_child(parent, helper_tool, redis_client, alice_client):
    from django.urls import reverse

    start_child(call(parent, helper_tool))
    (child,) = parent.children.all()
    page = alice_client.get(reverse("task_detail", args=[parent.pk])).content.decode()
    assert 'id="child-tasks"' in page and reverse("task_detail", args=[child.pk]) in page
    page = alice_client.get(reverse("task_detail", args=[child.pk])).content.decode()
    assert 'id="parent-task"' in page and reverse("task_detail", args=[parent.pk]) in page


def test_the_api_and_the_trace_download_carry_the_tree(parent, helper_tool, redis_client, alice_client):
    from django.urls import reverse

    start_child(call(parent, helper_tool))
    (child,) = parent.children.all()
    assert alice_client.get(reverse("task_trace", args=[parent.pk])).json()["children"] == [child.pk]
    doc = alice_client.get(reverse("task_trace", args=[child.pk])).json()
    assert doc["parent"] == parent.pk and doc["parent_call_id"] == "c1"


def test_the_compare_view_lists_each_runs_sub_agents(alice, helper_tool, redis_client, alice_client):
    import uuid

    from django.urls import reverse

    group = uuid.uuid4()
    runs = [Task.objects.create(owner=alice, prompt="p", model="smollm2-135m", mode=mode, compare_group=group,
                                status="running", engine_id=ENGINE) for mode in ("sync", "sync_parallel", "async")]
    start_child(call(runs[2], helper_tool))
    (child,) = runs[2].children.all()
    page = alice_client.get(reverse("compare", args=[group])).content.decode()
    assert f'data-parent="{runs[2].pk}"' in page and reverse("task_detail", args=[child.pk]) in page
    assert f'data-parent="{runs[0].pk}"' not in page
