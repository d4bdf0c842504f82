import pytest

from engine.messages import Sampling, TaskSubmission
from engine.scheduler import Scheduler
from tests.helpers import Clock, run_until_idle
from tests.scripted import ScriptedBackend


def submission(task_id: int, max_tokens: int = 50, prompt: str = "hi", **sampling) -> TaskSubmission:
    return TaskSubmission(task_id=task_id, model="scripted", prompt=prompt, max_tokens=max_tokens,
                          submitted_at=100.0, sampling=Sampling(**sampling))


@pytest.fixture
def backend():
    return ScriptedBackend([b"Hel", b"lo", b" world"])


@pytest.fixture
def scheduler(backend):
    return Scheduler(lambda name: backend, clock=Clock(step=0.01, start=0.0), wall=lambda: 101.5)


def test_it_decodes_until_the_stop_token(scheduler, backend):
    events = scheduler.submit(submission(1)) + run_until_idle(scheduler)
    kinds = [e.kind for e in events]
    assert kinds == ["status", "prefill", "token", "token", "token", "finish"]
    assert [e.seq for e in events] == list(range(1, 7))
    finish = events[-1].payload
    assert finish["status"] == "finished" and finish["finish_reason"] == "stop"
    assert finish["text"] == "Hello world"
    assert "".join(e.payload["text"] for e in events if e.kind == "token") == "Hello world"
    assert backend.closed == 1


def test_it_reports_the_papers_latency_metrics(scheduler):
    events = scheduler.submit(submission(1)) + run_until_idle(scheduler)
    metrics = events[-1].payload["metrics"]
    assert metrics["queue_wait_ms"] == 1500.0  # started 101.5 - submitted 100.0
    assert metrics["tokens"] == 3
    token_times = [e.t_ms for e in events if e.kind == "token"]
    assert token_times == sorted(token_times)
    assert metrics["latency_ms"] > 0 and metrics["ttft_ms"] > 0
    assert metrics["tokens_per_s"] == pytest.approx(2 / (metrics["latency_ms"] / 1000), rel=0.01)


def test_it_stops_at_max_tokens(scheduler):
    events = scheduler.submit(submission(1, max_tokens=2)) + run_until_idle(scheduler)
    assert events[-1].payload["finish_reason"] == "length"
    assert events[-1].payload["text"] == "Hello"


def test_it_interleaves_tasks_one_token_each(scheduler):
    scheduler.submit(submission(1))
    scheduler.submit(submission(2))
    order = [e.task_id for e in run_until_idle(scheduler) if e.kind == "token"]
    assert order == [1, 2, 1, 2, 1, 2]


def test_it_joins_utf8_characters_split_across_tokens():
    backend = ScriptedBackend(["é".encode()[:1], "é".encode()[1:], b"!"])
    scheduler = Scheduler(lambda name: backend, clock=Clock(step=0.01, start=0.0))
    events = scheduler.submit(submission(1)) + run_until_idle(scheduler)
    assert [e.payload["text"] for e in events if e.kind == "token"] == ["", "é", "!"]
    assert events[-1].payload["text"] == "é!"


def test_it_fails_a_prompt_that_does_not_fit_the_context():
    backend = ScriptedBackend([b"x"], n_ctx=100)
    scheduler = Scheduler(lambda name: backend, clock=Clock(step=0.01, start=0.0))
    events = scheduler.submit(submission(1, prompt="y" * 100))
    assert events[-1].kind == "finish"
    assert events[-1].payload["status"] == "failed"
    assert "does not fit the model's context of 100 tokens" in events[-1].payload["reason"]
    assert not scheduler.has_work()


def test_it_warns_and_caps_max_tokens_to_the_context():
    backend = ScriptedBackend([b"a"] * 100, n_ctx=120)
    scheduler = Scheduler(lambda name: backend, clock=Clock(step=0.01, start=0.0))
    events = scheduler.submit(submission(1, max_tokens=500)) + run_until_idle(scheduler)
    assert any(e.kind == "warning" and "max_tokens lowered" in e.payload["message"] for e in events)
    assert events[-1].payload["finish_reason"] == "length"


def test_it_fails_only_the_task_whose_backend_breaks():
    broken = ScriptedBackend([b"a", b"b", b"c"], fail_after=1)
    healthy = ScriptedBackend([b"a", b"b", b"c"])
    scheduler = Scheduler(lambda name: broken if name == "broken" else healthy, clock=Clock(step=0.01, start=0.0))
    scheduler.submit(TaskSubmission(1, "broken", "p", 10, 0.0))
    scheduler.submit(TaskSubmission(2, "ok", "p", 10, 0.0))
    finishes = {e.task_id: e.payload for e in run_until_idle(scheduler) if e.kind == "finish"}
    assert finishes[1]["status"] == "failed" and "scripted failure" in finishes[1]["reason"]
    assert finishes[2]["status"] == "finished" and finishes[2]["text"] == "abc"


def test_it_fails_a_task_whose_model_cannot_load():
    def get_backend(name):
        raise FileNotFoundError("no such model file")

    scheduler = Scheduler(get_backend, clock=Clock(step=0.01, start=0.0))
    events = scheduler.submit(submission(1))
    assert [e.kind for e in events] == ["finish"]
    assert "no such model file" in events[0].payload["reason"]


def test_it_cancels_a_running_task(scheduler, backend):
    scheduler.submit(submission(1))
    scheduler.step()
    events = scheduler.cancel(1, "user asked")
    assert events[-1].payload["status"] == "cancelled"
    assert not scheduler.has_work() and backend.closed == 1


def test_sampling_with_a_seed_is_reproducible():
    def texts(seed):
        backend = ScriptedBackend([b"a", b"b", b"c", b"d", b"e"])
        scheduler = Scheduler(lambda name: backend, clock=Clock(step=0.01, start=0.0))
        events = scheduler.submit(submission(1, temperature=1.5, seed=seed)) + run_until_idle(scheduler)
        return [e.payload["id"] for e in events if e.kind == "token"]

    assert texts(7) == texts(7)
    assert any(texts(7) != texts(s) for s in range(8, 20))
