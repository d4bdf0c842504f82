"""The shipped CML adapter through the real parts: the engine loads the base GGUF weights plus the
adapter, a real Celery worker runs the demo pack's tools, results are injected mid-decode."""

import pytest

from engine.catalog import get_model
from tests.helpers import wait_for
from webapp.runs.models import Task, TraceEvent
from webapp.runs.submit import submit_task
from webapp.tools.demo import DEMO_TOOLS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TUNED = "qwen2.5-coder-0.5b-cml"
QUESTION = "Get the stock price of AAPL and MSFT, and the weather in Paris."


def test_it_runs_the_demo_pack_in_async_on_the_tuned_model(start_engine, celery_worker_proc, alice):
    spec = get_model(TUNED)
    start_engine(preload=TUNED)
    tools = [t for t in DEMO_TOOLS if t["name"] in ("get_weather", "get_stock_price")]
    task = submit_task(alice, prompt=QUESTION, model=TUNED, max_tokens=200, temperature=0.0, top_p=1.0, seed=0,
                       mode="async", tools=tools)
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 240, f"task {task.pk} to end")
    task.refresh_from_db()
    # Protocol properties, not the model's wording or judgement (docs/benchmarks.md measures those).
    assert task.status == "finished", (task.status_reason, task.final_text)
    assert task.adapter == {"name": spec.adapter.name, "sha256": spec.adapter.sha256}
    assert task.metrics["prompt_tokens"] < 400  # the tuned profile: no worked examples
    events = list(TraceEvent.objects.filter(task=task).order_by("seq"))
    kinds = [e.kind for e in events]
    assert "malformed" not in kinds, task.final_text  # call blocks are constrained
    decoded = [e.payload for e in events if e.kind == "call_decoded"]
    ids = [p["call_id"] for p in decoded]
    assert ids and ids == [f"c{i}" for i in range(1, len(ids) + 1)]  # the engine's ids, never reused
    assert {p["name"] for p in decoded} <= {"get_weather", "get_stock_price"}
    tokens = [e for e in events if e.kind == "token"]
    first_dispatch = next(e for e in events if e.kind == "call_dispatched")
    injections = [e for e in events if e.kind == "interrupt_injected"]
    assert injections and {c for e in injections for c in e.payload["calls"]} <= set(ids)
    assert any(first_dispatch.seq < t.seq < injections[0].seq for t in tokens)  # decoding went on meanwhile
    assert any(t.seq > injections[0].seq for t in tokens)  # and after the first result
