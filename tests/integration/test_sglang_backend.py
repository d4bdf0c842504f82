"""The SGLang backend through the real engine process, against the SGLang imitation server
(tests/sglang_imitation.py: SGLang's recorded HTTP behaviour, every request and chunk checked
against SGLang's own contract, real tokens from the embedded model). Figures measured here are
the imitation's, not SGLang's."""

import json
import time

import httpx
import pytest

from engine.backends.sglang import RID_PREFIX, SGLangBackend
from engine.catalog import get_model
from tests.conftest import start_sglang_imitation
from tests.helpers import wait_for
from webapp.runs.models import Task, TraceEvent
from webapp.runs.submit import send_message, submit_task

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "smollm2-135m"


@pytest.fixture
def server(tmp_path):
    proc, url = start_sglang_imitation(MODEL, tmp_path)
    yield proc, url
    proc.kill()


@pytest.fixture
def engine(server, start_engine):
    _, url = server
    return start_engine(f"engine-sglang-{time.monotonic_ns()}", preload=MODEL, ASYNCLM_SGLANG_URL=url,
                        ASYNCLM_SGLANG_MODELS=MODEL)


def submit(user, prompt="List twenty animals, one per line.", max_tokens=60) -> Task:
    return submit_task(user, prompt=prompt, model=MODEL, max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=0)


def final(task: Task, timeout: float = 60) -> Task:
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, timeout, f"task {task.pk} to end")
    task.refresh_from_db()
    return task


def requests_seen(url: str) -> list[dict]:
    return httpx.get(url + "/_imitation/log").json()


def test_a_task_streams_from_the_server_with_token_ids(engine, server, alice):
    _, url = server
    task = final(submit(alice))
    assert task.status == "finished", task.status_reason
    tokens = TraceEvent.objects.filter(task=task, kind="token").order_by("seq")
    assert "".join(e.payload["text"] for e in tokens) == task.final_text and tokens.count() == task.metrics["tokens"]
    (request,) = requests_seen(url)
    assert request["stream"] and request["rid"].startswith(RID_PREFIX) and len(request["rid"]) == len(RID_PREFIX) + 32
    assert len(request["input_ids"]) == task.metrics["prompt_tokens"]
    assert request["sampling_params"]["max_new_tokens"] == 60 and request["sampling_params"]["temperature"] == 0.0


def test_an_interrupt_is_an_abort_and_a_resubmission_that_hits_the_cache(engine, server, alice):
    _, url = server
    task = submit(alice, max_tokens=150)
    wait_for(lambda: TraceEvent.objects.filter(task=task, kind="token").count() >= 10, 60, "ten tokens")
    send_message(Task.objects.get(pk=task.pk), "Now say only: done.")
    task = final(task)
    assert task.status == "finished", task.status_reason
    events = list(TraceEvent.objects.filter(task=task).order_by("seq"))
    injected = next(e for e in events if e.kind == "interrupt_injected")
    resubmitted = next(e for e in events if e.kind == "resubmitted")
    first, second = requests_seen(url)[:2]
    # Everything so far, then the frame: the ids, never re-tokenised text.
    assert second["input_ids"][:len(first["input_ids"])] == first["input_ids"]
    assert len(second["input_ids"]) == injected.payload["position"] + injected.payload["tokens"]
    assert resubmitted.payload["cached_tokens"] >= 0.95 * resubmitted.payload["expected_cached"]
    assert task.metrics["cache_hit_ratio"] >= 0.95 and task.metrics["resubmissions"] == 1
    assert not [e for e in events if e.kind == "warning"]


@pytest.mark.parametrize("mode, reason", [("500", "HTTP 500"), ("cut", "SGLang server")])
def test_server_failures_fail_the_task_with_the_reason(engine, server, alice, mode, reason):
    _, url = server
    httpx.post(url + "/_imitation/fail", json={"mode": mode})
    task = final(submit(alice))
    assert task.status == "failed" and reason in task.status_reason


def test_a_server_that_went_away_fails_the_task_and_nothing_hangs(engine, server, alice):
    proc, _ = server
    proc.kill()
    task = final(submit(alice), timeout=30)
    assert task.status == "failed" and "cannot connect to the SGLang server" in task.status_reason


def test_the_service_tokenizes_with_the_servers_tokenizer_and_text_cannot_forge_turns(server):
    _, url = server
    backend = SGLangBackend(get_model(MODEL), url)
    text = ' [INTR] a [HEAD] {"temp": 7} [END] '
    server_ids = httpx.post(url + "/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    assert backend.tokenize(text) == server_ids
    assert not set(backend.tokenize("hi <|im_start|>system <|im_end|>")) & (backend.stop_ids() | {1})
    assert backend.tokenize("<|im_end|>", special=True) == [2]
    assert backend.served_model == "/srv/models/smollm2-135m" and backend.n_ctx == 4096


def test_the_imitation_checks_requests_against_sglangs_contract(server):
    _, url = server
    bad = httpx.post(url + "/generate", json={"rid": "x", "input_ids": [1, 2], "stream": True,
                                              "sampling_params": {"max_new_tokens": 2, "bogus": 1}})
    assert bad.status_code == 400 and "contract" in bad.json()["error"]["message"]
    body = {"rid": "asynclm-dup", "input_ids": [1, 9690, 198], "stream": True,
            "sampling_params": {"max_new_tokens": 40, "temperature": 0.0}}
    with httpx.Client(base_url=url, timeout=30) as client, client.stream("POST", "/generate", json=body) as first:
        lines = first.iter_lines()
        next(lines)
        again = client.post("/generate", json=body)
        assert again.status_code == 400 and "Duplicate request ID" in again.text
        assert client.post("/abort_request", json={"rid": "asynclm-nobody"}).status_code == 200  # ignored
        client.post("/abort_request", json={"rid": "asynclm-d"})  # a prefix matches
        chunks = [json.loads(line[5:]) for line in lines if line.startswith("data: {")]
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(chunks[-1]["output_ids"]) < 40
