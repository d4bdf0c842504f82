"""The JSON API: its OpenAPI document, token and session authentication, per-user isolation,
task creation with the dashboard's validation, events, traces, messages, cancel, paging, rate limit."""

import json

import pytest
from django.test import Client
from django.urls import reverse
from openapi_spec_validator import validate

from engine.intake import Intake
from engine.keys import inbox_stream
from engine.messages import Control
from webapp.api.models import ApiToken
from webapp.runs.models import Task, ToolCall, TraceEvent

pytestmark = pytest.mark.django_db

NEW = {"prompt": "Say hi", "model": "smollm2-135m", "max_tokens": 16}


@pytest.fixture
def api(alice, redis_client):
    _, raw = ApiToken.issue(alice, "tests")
    return Client(headers={"authorization": f"Bearer {raw}"})


def post(client, path, body):
    return client.post(path, json.dumps(body), content_type="application/json")


def test_it_serves_a_valid_openapi_document_to_logged_in_users(client, alice):
    assert client.get("/api/openapi.json").status_code == 302  # to the login page
    client.force_login(alice)
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    assert {"/api/tasks", "/api/tasks/{pk}", "/api/tasks/{pk}/events", "/api/tasks/{pk}/messages",
            "/api/tasks/{pk}/cancel", "/api/tasks/{pk}/trace"} <= set(document["paths"])
    assert client.get("/api/docs").status_code == 200


def test_it_refuses_requests_without_credentials(client, redis_client):
    assert client.get("/api/tasks").status_code == 401
    assert Client(headers={"authorization": "Bearer alm_wrong"}).get("/api/tasks").status_code == 401


def test_it_creates_a_task_and_queues_it(api, alice, redis_client):
    response = post(api, "/api/tasks", NEW)
    assert response.status_code == 201, response.content
    body = response.json()
    task = Task.objects.get(pk=body["id"])
    assert (task.owner, task.prompt, task.status, body["status"]) == (alice, "Say hi", "queued", "queued")
    (claimed,) = Intake(redis_client).claim("engine-test")
    assert claimed.submission.task_id == task.pk


@pytest.mark.parametrize("change, field, message", [
    ({"prompt": "  "}, "prompt", "Write a prompt"),
    ({"model": "gpt-17"}, "model", "Select a valid choice"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"tools": ["demo/no_such_tool"]}, "tools", "no_such_tool"),
    ({"instances": {"e1": {"class": "Shell"}}}, "instances", "'class' must be one of"),
    ({"instances": {"e1": {"class": "GorillaFileSystem", "initial_config": {"a": "x" * 70000}}}}, "instances",
     "the limit is 65536"),
])
def test_it_explains_invalid_tasks_like_the_form(api, change, field, message):
    response = post(api, "/api/tasks", {**NEW, **change})
    assert response.status_code == 422
    assert message in " ".join(response.json()["errors"][field])
    assert not Task.objects.exists()


def test_a_malformed_body_is_a_clear_422(api):
    response = api.post("/api/tasks", "{not json", content_type="application/json")
    assert response.status_code in (400, 422)
    assert not Task.objects.exists()


def test_it_picks_tools_by_pack_and_name(api, demo_pack):
    response = post(api, "/api/tasks", {**NEW, "tools": ["demo/get_weather"]})
    assert response.status_code == 201
    assert Task.objects.get().tools[0]["name"] == "get_weather"


def test_a_comparison_makes_one_task_per_mode_and_queues_only_the_first(api, redis_client):
    response = post(api, "/api/tasks", {**NEW, "compare": True})
    assert response.status_code == 201
    body = response.json()
    assert [t["mode"] for t in body["tasks"]] == ["sync", "sync_parallel", "async"]
    claimed = Intake(redis_client).claim("engine-test")
    assert [c.submission.task_id for c in claimed] == [body["tasks"][0]["id"]]


def test_users_see_only_their_own_tasks(api, alice, bob):
    mine = Task.objects.create(owner=alice, prompt="mine", model="m")
    theirs = Task.objects.create(owner=bob, prompt="theirs", model="m")
    listed = api.get("/api/tasks").json()
    assert [t["id"] for t in listed["items"]] == [mine.pk]
    for path in ("", "/events", "/trace"):
        assert api.get(f"/api/tasks/{theirs.pk}{path}").status_code == 404
    assert post(api, f"/api/tasks/{theirs.pk}/cancel", {}).status_code == 404
    assert post(api, f"/api/tasks/{theirs.pk}/messages", {"text": "hi"}).status_code == 404


def test_the_list_pages_and_filters(api, alice):
    for i in range(30):
        Task.objects.create(owner=alice, prompt=f"p{i}", model="m", mode="sync" if i % 3 == 0 else "async")
    first = api.get("/api/tasks").json()
    assert first["count"] == 30 and len(first["items"]) == 25
    assert len(api.get("/api/tasks?page=2").json()["items"]) == 5
    assert api.get("/api/tasks?mode=sync").json()["count"] == 10


def test_the_list_builds_only_the_page_it_returns(api, alice, monkeypatch):
    from webapp.api import api as api_module

    for i in range(30):
        Task.objects.create(owner=alice, prompt=f"p{i}", model="m")
    built = []
    original = api_module.task_document
    monkeypatch.setattr(api_module, "task_document", lambda t, **kw: built.append(t.pk) or original(t, **kw))
    page = api.get("/api/tasks?page=2").json()
    assert page["count"] == 30 and len(built) == len(page["items"]) == 5
    assert [t["id"] for t in page["items"]] == built  # newest first, the oldest five on page 2


def test_events_after_a_sequence_number_and_the_whole_trace(api, alice):
    task = Task.objects.create(owner=alice, prompt="p", model="m", status="finished", final_text="hi")
    for seq in range(1, 6):
        TraceEvent.objects.create(task=task, seq=seq, t_ms=seq * 10.0, kind="token", payload={"text": str(seq)})
    ToolCall.objects.create(task=task, call_id="a", tool="f", arguments={"x": 1}, status="done", result={"ok": 1})
    body = api.get(f"/api/tasks/{task.pk}/events?after=3").json()
    assert [e["seq"] for e in body["events"]] == [4, 5] and body["last_seq"] == 5
    trace = api.get(f"/api/tasks/{task.pk}/trace").json()
    assert len(trace["events"]) == 5 and trace["calls"][0]["result"] == {"ok": 1} and trace["output"] == "hi"
    detail = api.get(f"/api/tasks/{task.pk}").json()
    assert detail["calls"][0]["call_id"] == "a" and detail["output"] == "hi"


def test_a_message_goes_to_the_engine_running_the_task(api, alice, redis_client):
    task = Task.objects.create(owner=alice, prompt="p", model="m", status="running", engine_id="engine-x")
    response = post(api, f"/api/tasks/{task.pk}/messages", {"text": "Also Paris, please."})
    assert response.status_code == 202
    ((_, fields),) = redis_client.xrange(inbox_stream("engine-x"))
    assert Control.from_json(fields[b"c"]) == Control(task.pk, "message", text="Also Paris, please.")


def test_a_message_for_a_task_that_is_not_running_is_refused(api, alice):
    task = Task.objects.create(owner=alice, prompt="p", model="m", status="finished")
    response = post(api, f"/api/tasks/{task.pk}/messages", {"text": "hi"})
    assert response.status_code == 409 and "finished" in response.json()["detail"]
    assert post(api, f"/api/tasks/{task.pk}/messages", {"text": ""}).status_code == 422


def test_cancel_through_the_api(api, alice):
    task = Task.objects.create(owner=alice, prompt="p", model="m")
    response = post(api, f"/api/tasks/{task.pk}/cancel", {})
    assert response.status_code == 202 and "cancelled before it started" in response.json()["detail"]
    assert Task.objects.get(pk=task.pk).status == "cancelled"


def test_task_creation_is_rate_limited_per_user(api, bob, redis_client):
    codes = [post(api, "/api/tasks", NEW).status_code for _ in range(7)]
    assert codes[:5] == [201] * 5 and codes[5:] == [429, 429]
    _, raw = ApiToken.issue(bob, "bob")
    assert post(Client(headers={"authorization": f"Bearer {raw}"}), "/api/tasks", NEW).status_code == 201


def test_the_browser_session_works_with_csrf(alice, redis_client):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.get("/api/tasks").status_code == 200
    assert post(browser, "/api/tasks", NEW).status_code == 403  # no CSRF token
    browser.get(reverse("dashboard"))
    token = browser.cookies["csrftoken"].value
    response = browser.post("/api/tasks", json.dumps(NEW), content_type="application/json",
                            headers={"x-csrftoken": token})
    assert response.status_code == 201


def test_tokens_are_made_shown_once_listed_and_revoked(client, alice, redis_client):
    client.force_login(alice)
    response = client.post(reverse("api_tokens"), {"name": "bench script"})
    raw = response.context["new_token"]
    assert raw.startswith("alm_") and raw in response.content.decode()
    token = ApiToken.objects.get()
    assert token.digest != raw and raw not in client.get(reverse("api_tokens")).content.decode()
    scripted = Client(headers={"authorization": f"Bearer {raw}"})
    assert scripted.get("/api/tasks").status_code == 200
    client.post(reverse("api_token_revoke", args=[token.pk]))
    assert scripted.get("/api/tasks").status_code == 401


def test_a_token_name_is_required_and_others_tokens_cannot_be_revoked(client, alice, bob):
    other, _ = ApiToken.issue(bob, "bob's")
    client.force_login(alice)
    assert "Name the token" in client.post(reverse("api_tokens"), {"name": ""}).content.decode()
    assert client.post(reverse("api_token_revoke", args=[other.pk])).status_code == 404
    assert ApiToken.objects.filter(pk=other.pk).exists()


def test_only_staff_may_pick_a_benchmark_decoder(api, alice, settings):
    response = post(api, "/api/tasks", {**NEW, "model": "simulated"})
    assert response.status_code == 422 and "Select a valid choice" in response.json()["errors"]["model"][0]
    alice.is_staff = True
    alice.save()
    assert post(api, "/api/tasks", {**NEW, "model": "simulated"}).status_code == 201
    alice.is_staff = False
    alice.save()
    settings.ASYNCLM_OFFER_BENCHMARK_DECODERS = True  # an operator's choice, for a benchmark setup
    assert post(api, "/api/tasks", {**NEW, "model": "simulated"}).status_code == 201


def test_text_a_database_cannot_store_is_refused_where_it_enters(api, alice, redis_client, client):
    task = Task.objects.create(owner=alice, prompt="p", model="m", status="running", engine_id="engine-x")
    response = post(api, f"/api/tasks/{task.pk}/messages", {"text": "Also\x00 Paris"})
    assert response.status_code == 422 and "NUL character" in json.dumps(response.json())
    response = post(api, "/api/tasks", {**NEW, "prompt": "Say \x00 hi"})
    assert response.status_code == 422 and "NUL character" in " ".join(response.json()["errors"]["prompt"])
    client.force_login(alice)
    page = client.post(reverse("task_message", args=[task.pk]), {"text": "x\x00"}, follow=True).content.decode()
    assert "NUL character" in page and "Nothing was sent" in page
    assert not redis_client.exists(inbox_stream("engine-x"))  # nothing reached the engine
    assert Task.objects.count() == 1


def test_a_user_has_at_most_the_configured_number_of_open_tasks(api, alice, bob, settings, client, redis_client):
    settings.ASYNCLM_MAX_OPEN_TASKS_PER_USER = 2  # (five API requests: the tests' rate limit is 5/m)
    assert post(api, "/api/tasks", NEW).status_code == 201
    response = post(api, "/api/tasks", {**NEW, "compare": True})  # three more would make four
    assert response.status_code == 409 and "limit is 2 per user" in response.json()["detail"]
    assert post(api, "/api/tasks", NEW).status_code == 201
    assert post(api, "/api/tasks", NEW).status_code == 409
    Task.objects.filter(owner=alice).update(status="finished")  # finished tasks do not count
    assert post(api, "/api/tasks", NEW).status_code == 201
    client.force_login(bob)  # another user's backlog is their own
    page = client.post(reverse("dashboard"), {"prompt": "hi", "model": "smollm2-135m", "max_tokens": 8,
                                              "temperature": 0, "top_p": 1, "seed": 0, "mode": "async",
                                              "max_calls": 4, "max_wall_s": 60})
    assert page.status_code == 302
    assert Task.objects.filter(owner=alice).count() == 3 and Task.objects.filter(owner=bob).count() == 1


def test_the_form_and_the_api_share_one_task_creation_rate(api, alice, settings, client, redis_client):
    settings.ASYNCLM_TASK_RATE = "3/h"
    assert [post(api, "/api/tasks", NEW).status_code for _ in range(2)] == [201, 201]
    client.force_login(alice)
    form = {"prompt": "hi", "model": "smollm2-135m", "max_tokens": 8, "temperature": 0, "top_p": 1, "seed": 0,
            "mode": "async", "max_calls": 4, "max_wall_s": 60}
    assert client.post(reverse("dashboard"), form).status_code == 302  # the third, through the form
    page = client.post(reverse("dashboard"), form)
    assert page.status_code == 400 and "At most 3 tasks per hour may be created" in page.content.decode()
    response = post(api, "/api/tasks", NEW)
    assert response.status_code == 429 and "at most 3 tasks per hour" in response.json()["detail"]
    assert Task.objects.filter(owner=alice).count() == 3
