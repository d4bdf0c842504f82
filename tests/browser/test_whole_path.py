"""The whole path in a real browser: submit an async task with two simulated tools and watch the
timeline gain call lanes and interrupt markers while tokens stream; message a running task and
see the message injected; open the compare view. Screenshots go to var/screenshots/ (git-ignored)."""

import re

import pytest
from django.conf import settings
from playwright.sync_api import expect

from tests.browser.test_task_page import log_in
from webapp.runs.models import Task, TraceEvent

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MODEL = "qwen2.5-coder-0.5b"
SHOTS = settings.VAR_DIR / "screenshots"


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def demo_tools(demo_pack):
    return {t.name: t.pk for t in demo_pack.tools.all()}


def submit(page, prompt: str, max_tokens: int, tools=(), mode="async", compare=False) -> None:
    page.fill("#id_prompt", prompt)
    page.select_option("#id_model", MODEL)
    page.select_option("#id_mode", mode)
    page.fill("#id_max_tokens", str(max_tokens))
    if tools:
        page.select_option("#id_tools", [str(pk) for pk in tools])
    if compare:
        page.check("#id_compare")
    page.click("#submit-form button[type=submit]")


def test_the_timeline_grows_live_with_call_lanes_and_interrupt_markers(page, web_server, start_engine,
                                                                      celery_worker_proc, alice, demo_tools):
    start_engine(preload=MODEL)
    log_in(page, web_server, "alice")
    submit(page, "What's the weather in Berlin and in Rome?", 120,
           tools=[demo_tools["get_weather"], demo_tools["get_stock_price"]])
    expect(page).to_have_url(re.compile(r"/tasks/\d+/$"))
    # Two call lanes and an injection marker appear while the model is still decoding.
    expect(page.locator("#timeline .call-running").first).to_be_visible(timeout=90_000)
    expect(page.locator("#timeline .marker").first).to_be_attached(timeout=60_000)
    tokens_at_marker = page.evaluate("window.asynclmTrace.tokens")
    assert page.locator("#status").text_content() == "running"
    shot(page, "task-live")
    expect(page.locator("#status")).to_have_text("finished", timeout=120_000)
    task = Task.objects.get()
    assert page.evaluate("window.asynclmTrace.tokens") == task.metrics["tokens"] > tokens_at_marker
    lanes = page.locator("#timeline text.lane-label")
    assert lanes.count() == 1 + task.calls.count() and task.calls.count() >= 2
    expect(page.locator("#output .cml-call").first).to_contain_text("[CALL]")
    expect(page.locator("#output .intr").first).to_contain_text("[INTR]")
    page.locator("#timeline .marker .mark-hit").first.click()
    expect(page.locator("#marker-detail")).to_contain_text("token position")
    expect(page.locator('[data-metric="overlap_ms"]')).to_contain_text(" ms")
    shot(page, "task")


def test_a_message_from_the_page_is_injected_into_the_running_task(page, web_server, start_engine, alice):
    start_engine(preload=MODEL)
    log_in(page, web_server, "alice")
    submit(page, "Write a long story about a dragon who loves tea.", 300)
    page.wait_for_function("window.asynclmTrace && window.asynclmTrace.tokens >= 12", timeout=90_000)
    page.fill("#message-text", "Stop the story now. Reply only with the word BANANA.")
    page.click("#message-form button[type=submit]")
    expect(page.locator("#message-status")).to_contain_text("message sent")
    expect(page.locator("#output .cml-message")).to_contain_text("Reply only with the word BANANA.", timeout=30_000)
    expect(page.locator("#timeline .mark-message")).to_be_attached()
    expect(page.locator("#status")).to_have_text("finished", timeout=120_000)
    task = Task.objects.get()
    injected = TraceEvent.objects.get(task=task, kind="interrupt_injected")
    assert injected.payload["messages"] == ["Stop the story now. Reply only with the word BANANA."]
    shot(page, "task-message")


def test_the_compare_view_stacks_three_runs_on_one_axis(page, web_server, start_engine, celery_worker_proc, alice,
                                                       demo_tools):
    start_engine(preload=MODEL)
    log_in(page, web_server, "alice")
    submit(page, "What's the weather in Berlin and in Rome?", 80, tools=[demo_tools["get_weather"]], compare=True)
    expect(page).to_have_url(re.compile(r"/compare/[0-9a-f-]+/$"))
    expect(page.locator("svg.timeline")).to_have_count(3)
    rows = page.locator("#summary tbody tr")
    for i in range(3):
        expect(rows.nth(i).locator(".status")).to_have_text("finished", timeout=180_000)
    expect(rows.nth(0).locator(".c-speedup")).to_have_text("1.00×")
    expect(rows.nth(2).locator(".c-speedup")).to_have_text(re.compile(r"^\d+\.\d\d×$"))
    # One shared axis: the three timelines have the same ticks.
    ticks = [page.locator("svg.timeline").nth(i).locator("text.tick").all_text_contents() for i in range(3)]
    assert ticks[0] == ticks[1] == ticks[2] and len(ticks[0]) >= 3
    runs = list(Task.objects.order_by("pk"))
    assert [t.mode for t in runs] == ["sync", "sync_parallel", "async"]
    assert runs[0].finished_at <= runs[1].started_at and runs[1].finished_at <= runs[2].started_at  # one at a time
    shot(page, "compare")
