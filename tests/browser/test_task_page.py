import re

import pytest
from playwright.sync_api import expect

from webapp.runs.models import Task

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-for-tests-123"


def log_in(page, base_url: str, username: str) -> None:
    page.goto(base_url + "/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1", has_text="New task")).to_be_visible()


def test_tokens_stream_into_the_task_page_then_the_final_status(page, web_server, start_engine, alice, test_model):
    start_engine()
    log_in(page, web_server, "alice")
    expect(page.locator("#health")).to_contain_text("Engines: ")
    page.fill("#id_prompt", "List twenty animals, one per line.")
    page.select_option("#id_model", test_model)
    page.fill("#id_max_tokens", "150")
    page.click("#submit-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/tasks/\d+/$"))

    # Tokens arrive while the task is still running...
    page.wait_for_function("window.asynclmTrace && window.asynclmTrace.tokens > 0", timeout=30_000)
    seen_running = page.locator("#status").text_content() in ("running", "queued")
    count_while_running = page.evaluate("window.asynclmTrace.tokens")
    expect(page.locator("#output")).not_to_be_empty()
    # ...and the page ends with the final status and metrics.
    expect(page.locator("#status")).to_have_text("finished", timeout=90_000)
    assert seen_running and 0 < count_while_running
    final = Task.objects.get()
    assert page.evaluate("window.asynclmTrace.tokens") == final.metrics["tokens"] > count_while_running
    expect(page.locator("#output")).to_have_text(final.final_text)
    expect(page.locator("#timeline .seg-decoding").first).to_be_visible()
    expect(page.locator('[data-metric="tokens"]')).to_have_text(str(final.metrics["tokens"]))
    expect(page.locator('[data-metric="latency_ms"]')).to_contain_text(" ms")


def test_a_finished_task_page_replays_from_storage(page, web_server, start_engine, alice, test_model):
    from webapp.runs.submit import submit_task

    start_engine()
    task = submit_task(alice, prompt="Say hello.", model=test_model, max_tokens=16, temperature=0.0, top_p=1.0, seed=0)
    import time

    deadline = time.monotonic() + 60
    while not Task.objects.get(pk=task.pk).is_final and time.monotonic() < deadline:
        time.sleep(0.1)
    log_in(page, web_server, "alice")
    page.goto(f"{web_server}/tasks/{task.pk}/")
    expect(page.locator("#status")).to_have_text("finished")
    expect(page.locator("#live")).to_contain_text("finished", timeout=10_000)
    expect(page.locator("#output")).to_have_text(Task.objects.get(pk=task.pk).final_text)


def test_another_user_cannot_open_the_task(page, web_server, alice, bob, redis_client):
    task = Task.objects.create(owner=alice, prompt="private", model="m")
    log_in(page, web_server, "bob")
    response = page.goto(f"{web_server}/tasks/{task.pk}/")
    assert response.status == 404
    assert "private" not in page.content()


@pytest.mark.slow
def test_calls_and_injected_results_show_live(page, web_server, start_engine, celery_worker_proc, alice):
    from webapp.tools.demo import install_demo_pack
    from webapp.tools.models import Tool, ToolPack

    install_demo_pack(ToolPack, Tool)
    start_engine(preload="qwen2.5-coder-0.5b")
    log_in(page, web_server, "alice")
    page.fill("#id_prompt", "What's the weather in Berlin and in Rome?")
    page.select_option("#id_model", "qwen2.5-coder-0.5b")
    page.select_option("#id_pack", "demo")
    page.select_option("#id_mode", "async")
    page.fill("#id_max_tokens", "120")
    page.click("#submit-form button[type=submit]")
    expect(page.locator("#calls tbody tr").first).to_be_visible(timeout=90_000)
    expect(page.locator("#output .intr").first).to_be_visible(timeout=60_000)
    expect(page.locator("#status")).to_have_text("finished", timeout=90_000)
    task = Task.objects.get()
    assert page.locator("#calls tbody tr").count() == task.calls.count() >= 1
    first = page.locator("#calls tbody tr").first
    expect(first).to_contain_text("get_weather")
    expect(first).to_contain_text("done")


def test_model_output_and_tool_results_are_shown_as_text_not_run(page, web_server, alice, redis_client):
    from webapp.runs.models import TraceEvent

    evil = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    task = Task.objects.create(owner=alice, prompt=evil, model="m", status="finished", final_text="")
    events = [
        ("status", {"status": "running"}), ("prefill", {"prompt_tokens": 3, "ms": 1.0, "reused_tokens": 0}),
        ("token", {"i": 1, "text": evil}),
        ("call_decoded", {"call_id": "a", "name": "f", "args": {"x": evil}, "position": 4, "depends_on": []}),
        ("call_result", {"call_id": "a", "ok": True, "error": "", "error_type": "", "injected": evil}),
        ("interrupt_injected", {"calls": ["a"], "messages": [], "began_ms": 5.0, "position": 5, "tokens": 9,
                                "ms": 1.0, "text": f" [INTR] a [HEAD] {evil} [END] "}),
        ("finish", {"status": "finished", "reason": "", "finish_reason": "stop", "text": "", "metrics": {}}),
    ]
    for seq, (kind, payload) in enumerate(events, start=1):
        TraceEvent.objects.create(task=task, seq=seq, t_ms=float(seq), kind=kind, payload=payload)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    log_in(page, web_server, "alice")
    page.goto(f"{web_server}/tasks/{task.pk}/")
    expect(page.locator("#live")).to_contain_text("finished")
    expect(page.locator("#output")).to_contain_text("<script>window.pwned = 1</script>")
    expect(page.locator("#calls tbody tr").first).to_contain_text("<img src=x")
    assert page.evaluate("window.pwned") is None and not dialogs
    assert page.locator("#output script, #output img, #calls script, #calls img").count() == 0
