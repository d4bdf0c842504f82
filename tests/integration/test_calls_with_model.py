"""The AsyncLM engine end to end: the default model decoding real tokens, a real Celery worker
running the calls, results delivered through Redis and injected into the live KV cache."""


import os

import pytest

from engine.tools import ToolSpec
from tests.helpers import wait_for
from webapp.runs.models import Task, ToolCall, TraceEvent
from webapp.runs.submit import submit_task
from webapp.tools.demo import DEMO_TOOLS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MODEL = "qwen2.5-coder-0.5b"
WEATHER = dict(DEMO_TOOLS[0])
QUESTION = "What's the weather in Berlin and in Rome?"


def weather(**changes) -> dict:
    return ToolSpec(**{**WEATHER, **changes}).to_dict()


def run_task(user, mode: str, tools: list[dict], prompt: str = QUESTION, timeout: float = 120, **extra) -> Task:
    task = submit_task(user, prompt=prompt, model=MODEL, max_tokens=120, temperature=0.0, top_p=1.0, seed=0,
                       mode=mode, tools=tools, **extra)
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, timeout, f"task {task.pk} to end")
    task.refresh_from_db()
    return task


def events_of(task) -> list[TraceEvent]:
    return list(TraceEvent.objects.filter(task=task).order_by("seq"))


def first(events, kind, **match):
    return next(e for e in events if e.kind == kind and all(e.payload.get(k) == v for k, v in match.items()))


@pytest.fixture(scope="module")
def sglang_url(tmp_path_factory):
    from tests.conftest import start_sglang_imitation

    proc, url = start_sglang_imitation(MODEL, tmp_path_factory.mktemp("sglang"))
    yield url
    proc.kill()


REAL_SGLANG = os.environ.get("ASYNCLM_TEST_SGLANG_QWEN_URL", "")  # a real server with MODEL (`make test-sglang`)


@pytest.fixture(params=["embedded", "embedded-contexts", "sglang", *(["sglang-real"] if REAL_SGLANG else [])])
def engine(request, start_engine, celery_worker_proc):
    """Every mode test runs once per backend: the embedded model (the batched backend, the default:
    one context, a batch per step; and a context per task, `ASYNCLM_EMBEDDED_BATCHED=false`), and
    SGLang over HTTP (the imitation server, generating with the same model; and a real SGLang
    server under `make test-sglang`)."""
    if request.param == "embedded":
        return start_engine(preload=MODEL)
    if request.param == "embedded-contexts":
        return start_engine("engine-contexts", preload=MODEL, ASYNCLM_EMBEDDED_BATCHED="false")
    url = REAL_SGLANG if request.param == "sglang-real" else request.getfixturevalue("sglang_url")
    return start_engine(f"engine-sglang-{request.node.name[-20:]}", preload=MODEL, ASYNCLM_SGLANG_URL=url,
                        ASYNCLM_SGLANG_MODELS=MODEL)


def test_async_dispatches_before_decoding_ends_and_injects_while_decoding(engine, alice):
    task = run_task(alice, "async", [weather()])
    assert task.status == "finished", task.status_reason
    events = events_of(task)
    tokens = [e for e in events if e.kind == "token"]
    dispatched = first(events, "call_dispatched")
    injected = first(events, "interrupt_injected")
    # Dispatched mid-decode: tokens follow the dispatch before the result is injected...
    assert any(dispatched.seq < t.seq < injected.seq for t in tokens)
    # ...and the result lands while decoding is still going on: more tokens come after it.
    assert any(t.seq > injected.seq for t in tokens)
    assert dispatched.t_ms < tokens[-1].t_ms
    assert injected.payload["position"] > task.metrics["prompt_tokens"]
    call = ToolCall.objects.get(task=task, call_id=injected.payload["calls"][0])
    assert call.status == "done" and call.worker and call.started_ms <= call.finished_ms <= call.injected_ms
    assert "[INTR]" in task.final_text and task.metrics["injected_tokens"] > 0


def test_sync_decodes_nothing_between_a_call_and_its_result(engine, alice):
    task = run_task(alice, "sync", [weather()])
    assert task.status == "finished", task.status_reason
    events = events_of(task)
    for decoded in [e for e in events if e.kind == "call_decoded"]:
        injected = next(e for e in events if e.kind == "interrupt_injected" and e.seq > decoded.seq)
        assert decoded.payload["call_id"] in injected.payload["calls"]
        assert not [e for e in events if e.kind == "token" and decoded.seq < e.seq < injected.seq]


def test_sync_parallel_injects_all_results_of_a_batch_together(engine, alice):
    task = run_task(alice, "sync_parallel", [weather()])
    assert task.status == "finished", task.status_reason
    events = events_of(task)
    decoded = [e.payload["call_id"] for e in events if e.kind == "call_decoded"]
    injections = [e.payload["calls"] for e in events if e.kind == "interrupt_injected"]
    assert len(decoded) >= 2, task.final_text
    assert sorted(injections[0]) == sorted(decoded)  # one injection carried the whole batch
    first_dispatch = first(events, "call_dispatched")
    assert all(e.seq > first(events, "call_decoded", call_id=decoded[-1]).seq
               for e in events if e.kind == "call_dispatched")  # nothing ran before the model yielded
    assert first_dispatch.seq > 0


def test_two_tasks_decode_interleaved_while_a_third_is_parked(engine, alice):
    slow = weather(config={**WEATHER["config"], "latency_ms": {"dist": "fixed", "value": 8000}}, timeout_s=20)
    parked = submit_task(alice, prompt="What's the weather in Oslo?", model=MODEL, max_tokens=80, temperature=0.0,
                         top_p=1.0, seed=0, mode="async", tools=[slow])
    wait_for(lambda: TraceEvent.objects.filter(task=parked, kind__in=["trap", "parked"]).exists(), 90,
             "the first task to park")
    others = [submit_task(alice, prompt=p, model=MODEL, max_tokens=30, temperature=0.0, top_p=1.0, seed=0)
              for p in ("Name three colours.", "Name three fruits.")]
    for task in [parked, *others]:
        wait_for(lambda t=task: Task.objects.get(pk=t.pk).is_final, 120, f"task {task.pk}")
    events = events_of(parked)
    park = next(e for e in events if e.kind in ("trap", "parked") and e.payload.get("action", "parked") == "parked")
    resume = first(events, "resumed")
    assert not [e for e in events if e.kind == "token" and park.seq < e.seq < resume.seq]
    started = Task.objects.get(pk=parked.pk).started_at.timestamp()
    park_at, resume_at = started + park.t_ms / 1000, started + resume.t_ms / 1000
    windows = []
    for task in others:
        task.refresh_from_db()
        assert task.status == "finished"
        tokens = TraceEvent.objects.filter(task=task, kind="token")
        times = [task.started_at.timestamp() + e.t_ms / 1000 for e in tokens]
        windows.append((min(times), max(times)))
        while_parked = [t for t in times if park_at <= t <= resume_at]
        assert len(while_parked) >= 5  # they decoded while it was parked
    if not engine.name.startswith("engine-sglang"):  # on SGLang, concurrency is the server's business
        (a0, a1), (b0, b1) = windows
        assert a0 < b1 and b0 < a1  # interleaved, not one after the other
