"""Sub-agents on the parent's page: as the parent's call starts a child task, the child appears as
a lane of its own on the parent's clock (the page polls for new sub-agents), its decoding drawn
live from its own websocket, and its name links to its page, which links back."""

import json
import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_task_page import log_in
from tests.helpers import wait_for
from tests.integration.test_agents import HELPER_CONFIG, helper, parent_prompt  # noqa: F401 - a fixture
from webapp.runs.models import Task
from webapp.runs.submit import submit_task

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_sub_agent_appears_as_a_lane_and_links_both_ways(page, web_server, start_engine, celery_worker_proc,
                                                           alice, helper):  # noqa: F811 - the fixture
    slow = {"calls": [], "final": "It will be sunny all week. " * 4, "token_ms": 50}
    helper.config = {**HELPER_CONFIG, "instruction": f"You answer weather questions.\n[plan] {json.dumps(slow)}\n"}
    helper.save()
    start_engine("engine-lanes", preload="simulated")
    call = {"id": "c1", "call": "ask_helper(task='Weather this week?')", "e": 500, "after": None}
    parent = submit_task(alice, prompt=parent_prompt([call]), model="simulated", mode="async", max_tokens=200,
                         tools=[helper.spec().to_dict()])
    log_in(page, web_server, "alice")
    page.goto(f"{web_server}/tasks/{parent.pk}/")
    wait_for(lambda: Task.objects.filter(parent=parent).exists(), 30, "the child task")
    child = Task.objects.get(parent=parent)
    lane = page.locator("#agent-lanes a.lane-link", has_text=f"c1 → task {child.pk}")
    expect(lane).to_be_visible(timeout=15_000)
    expect(page.locator("#agent-lanes a.lane-link.current")).to_contain_text("this task")
    # The child's decoding is drawn in its own row, below the parent's.
    page.wait_for_function("new Set(Array.from(document.querySelectorAll('#agent-lanes rect.seg-decoding'))"
                           ".map(r => r.getAttribute('y'))).size === 2", timeout=30_000)
    wait_for(lambda: Task.objects.get(pk=parent.pk).is_final, 60, "the parent to end")
    lane.click()
    expect(page).to_have_url(re.compile(rf"/tasks/{child.pk}/$"))
    page.click(f"#parent-task a[href='/tasks/{parent.pk}/']")
    expect(page).to_have_url(re.compile(rf"/tasks/{parent.pk}/$"))
