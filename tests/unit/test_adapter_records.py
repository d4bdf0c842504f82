"""Which LoRA adapter a task ran with: the engine's first event says it, the store keeps it on the
task, the API returns it and the task page shows it next to the model."""

import pytest
from django.test import Client
from django.urls import reverse

from engine.catalog import AdapterSpec, tuned
from engine.messages import Sampling, TaskSubmission, TraceEvent
from engine.scheduler import Scheduler
from tests.scripted import SPEC, ScriptedBackend
from webapp.api.models import ApiToken
from webapp.runs.models import Task
from webapp.runs.store import DjangoTaskStore

SHA = "3f2a9c0d41b7e8f5" + "0" * 48
REF = {"name": "cml", "sha256": SHA}


def first_event(backend: ScriptedBackend) -> TraceEvent:
    scheduler = Scheduler(lambda name: backend)
    return scheduler.submit(TaskSubmission(1, "scripted", "hi", 4, 0.0, Sampling()))[0]


def test_it_names_the_adapter_in_the_running_event():
    backend = ScriptedBackend([b"ok"])
    backend.spec = tuned(SPEC, name="scripted-cml", label="t",
                         adapter=AdapterSpec("cml", "finetune/adapters/x.gguf", SHA, 10))
    event = first_event(backend)
    assert (event.kind, event.payload["status"], event.payload["adapter"]) == ("status", "running", REF)


def test_a_plain_model_runs_with_no_adapter():
    assert first_event(ScriptedBackend([b"ok"])).payload["adapter"] is None


@pytest.mark.django_db
def test_the_store_keeps_the_adapter_on_the_task(alice):
    task = Task.objects.create(owner=alice, prompt="p", model="m")
    plain = Task.objects.create(owner=alice, prompt="p", model="m")
    running = {"status": "running", "model": "m", "mode": "async", "started_at": 1.0}
    DjangoTaskStore().save_events([
        TraceEvent(task.pk, 1, 0.0, "status", {**running, "adapter": REF}),
        TraceEvent(plain.pk, 1, 0.0, "status", {**running, "adapter": None}),
        TraceEvent(task.pk, 2, 1.0, "token", {"text": "a"}),
    ])
    task.refresh_from_db()
    plain.refresh_from_db()
    assert (task.adapter, plain.adapter) == (REF, None)


@pytest.mark.django_db
def test_the_api_returns_the_adapter(alice, redis_client):
    _, raw = ApiToken.issue(alice, "tests")
    api = Client(headers={"authorization": f"Bearer {raw}"})
    task = Task.objects.create(owner=alice, prompt="p", model="qwen2.5-coder-0.5b-cml", adapter=REF)
    plain = Task.objects.create(owner=alice, prompt="p", model="m")
    assert api.get(f"/api/tasks/{task.pk}").json()["adapter"] == REF
    assert api.get(f"/api/tasks/{plain.pk}").json()["adapter"] is None
    assert {t["id"]: t["adapter"] for t in api.get("/api/tasks").json()["items"]} == {task.pk: REF, plain.pk: None}
    browser = Client()
    browser.force_login(alice)
    schema = browser.get("/api/openapi.json").json()["components"]["schemas"]
    assert set(schema["AdapterOut"]["properties"]) == {"name", "sha256"}


@pytest.mark.django_db
def test_the_task_page_shows_the_adapter_next_to_the_model(client, alice):
    client.force_login(alice)
    task = Task.objects.create(owner=alice, prompt="p", model="qwen2.5-coder-0.5b-cml", adapter=REF)
    plain = Task.objects.create(owner=alice, prompt="p", model="qwen2.5-coder-0.5b")

    def model_line(t: Task) -> str:
        body = client.get(reverse("task_detail", args=[t.pk])).content.decode()
        return body.split("<dt>Model</dt>")[1].split("<dt>Mode</dt>")[0]

    assert "qwen2.5-coder-0.5b-cml" in model_line(task) and "adapter cml (3f2a9c0d41b7…)" in model_line(task)
    assert model_line(plain) == "<dd>qwen2.5-coder-0.5b</dd>\n    "
