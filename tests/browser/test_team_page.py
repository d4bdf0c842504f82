"""A team from the browser: the New team page starts one task per member; each member's page
names its teammates, links to them and draws every member as a lane on one clock, and both run
to their end on a real engine."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_task_page import log_in
from tests.helpers import wait_for
from webapp.runs.models import Task

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_team_starts_from_its_page_and_members_link_to_each_other(page, web_server, start_engine, alice, test_model):
    start_engine()
    log_in(page, web_server, "alice")
    page.click("#new-team")
    expect(page.locator("h1", has_text="New team")).to_be_visible()
    page.fill("#id_team-goal", "Name three fruits.")
    page.fill("#id_team-max_tokens", "16")
    for i, (name, role) in enumerate([("picker", "You pick fruits."), ("checker", "You check the list.")]):
        page.fill(f"#id_member-{i}-name", name)
        page.fill(f"#id_member-{i}-role", role)
        page.select_option(f"#id_member-{i}-model", test_model)
    page.click("#team-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/tasks/\d+/$"))
    picker, checker = Task.objects.order_by("pk")
    assert (picker.member, checker.member) == ("picker", "checker") and picker.team == checker.team
    expect(page.locator("#team-members")).to_contain_text("picker")
    page.click(f"#team-members a[href='/tasks/{checker.pk}/']")
    expect(page.locator("#team-members")).to_contain_text("checker")
    expect(page.locator(f"#team-members a[href='/tasks/{picker.pk}/']")).to_be_visible()
    for task in (picker, checker):
        wait_for(lambda t=task: Task.objects.get(pk=t.pk).is_final, 90, f"{task.member} to end")
    expect(page.locator("#status")).to_have_text("finished", timeout=30_000)
    # Both members on one clock: a lane each, with the decoding drawn in both rows.
    lanes = page.locator("#agent-lanes")
    expect(lanes.locator("a.lane-link")).to_have_count(2)
    expect(lanes.locator("a.lane-link.current")).to_contain_text("checker")
    page.wait_for_function("new Set(Array.from(document.querySelectorAll('#agent-lanes rect.seg-decoding'))"
                           ".map(r => r.getAttribute('y'))).size === 2", timeout=30_000)
    lanes.locator("a.lane-link", has_text="picker").click()
    expect(page).to_have_url(re.compile(rf"/tasks/{picker.pk}/$"))


def test_a_bad_team_is_explained_and_the_input_kept(page, web_server, alice, redis_client):
    log_in(page, web_server, "alice")
    page.goto(web_server + "/teams/new/")
    page.fill("#id_team-goal", "Plan a picnic.")
    for i in (0, 1):
        page.fill(f"#id_member-{i}-name", "twin")
        page.fill(f"#id_member-{i}-role", "You help.")
    page.click("#team-form button[type=submit]")
    expect(page.locator("#members-error")).to_contain_text("must differ")
    expect(page.locator("#id_team-goal")).to_have_value("Plan a picnic.")
    assert not Task.objects.exists()
