"""A worker killed mid-call: the engine injects a timeout error after the grace period.
Its own module, so the only worker that can take the call is the one the test kills."""

import time

import pytest

from tests.helpers import wait_for
from tests.integration.test_calls_with_model import MODEL, WEATHER, events_of, weather
from webapp.runs.models import Task, TraceEvent
from webapp.runs.submit import submit_task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_call_whose_worker_dies_gets_a_timeout_error_the_model_sees(start_engine, own_celery_worker, alice):
    start_engine(preload=MODEL)
    slow = weather(config={**WEATHER["config"], "latency_ms": {"dist": "fixed", "value": 30000}}, timeout_s=3)
    task = submit_task(alice, prompt="What's the weather in Oslo?", model=MODEL, max_tokens=80, temperature=0.0,
                       top_p=1.0, seed=0, mode="async", tools=[slow])
    wait_for(lambda: TraceEvent.objects.filter(task=task, kind="call_started").exists(), 90, "the call to start")
    own_celery_worker.kill(sig=9)
    started = time.monotonic()
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 60, "the task to end")
    task.refresh_from_db()
    assert task.status == "finished"
    (result,) = [e for e in events_of(task) if e.kind == "call_result"]
    assert not result.payload["ok"] and "no result within the 3 s timeout" in result.payload["error"]
    assert "no result within the 3 s timeout" in task.final_text  # injected: the model saw it
    assert time.monotonic() - started < 30
