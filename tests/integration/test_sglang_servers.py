"""The SGLang backend against SGLang servers: the imitation always, and a real SGLang server
when `make test-sglang` runs one (ASYNCLM_TEST_SGLANG_URL). Each test states the real server's
behaviour, so the imitation is held to it: seeds, a grammar inside a call block, the served
model, aborts, grammar errors, the prefix cache, and whole tasks through the engine."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import httpx
import pytest

from engine.backends.base import StreamEnd
from engine.backends.sglang import ServedModelMismatch, SGLangBackend
from engine.catalog import get_model
from engine.grammar import call_structural_tag
from tests.conftest import start_sglang_imitation
from tests.helpers import wait_for
from webapp.runs.models import Task, TraceEvent
from webapp.runs.submit import send_message, submit_task

MODEL = "smollm2-135m"
REAL_URL = os.environ.get("ASYNCLM_TEST_SGLANG_URL", "")
SERVERS = ["imitation", "real"] if REAL_URL else ["imitation"]


@dataclass
class Server:
    kind: str
    url: str
    served_path: str


@pytest.fixture(scope="module", params=SERVERS)
def sglang(request, tmp_path_factory):
    if request.param == "real":
        info = httpx.get(REAL_URL + "/get_model_info", timeout=10).json()
        yield Server("real", REAL_URL, info["model_path"])
        return
    proc, url = start_sglang_imitation(MODEL, tmp_path_factory.mktemp("sglang"))
    yield Server("imitation", url, f"/srv/models/{MODEL}")
    proc.kill()


@pytest.fixture(scope="module")
def backend(sglang):
    return SGLangBackend(get_model(MODEL), sglang.url)


def prompt_ids(backend, user: str, assistant: str = "") -> list[int]:
    return backend.tokenize(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", special=True) + (
        backend.tokenize(assistant) if assistant else [])


def generate(backend, ids, abort_after: int | None = None, **params) -> tuple[str, list, StreamEnd, object]:
    """One streamed request: its text, its (token, text) items, its end and its sequence."""
    seq = backend.open_sequence()
    sampling = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    structural_tag = params.pop("structural_tag", None)
    sampling.update(params)
    seq.submit(ids, backend.sampling_params(**sampling, structural_tag=structural_tag), "prompt")
    items, deadline = [], time.monotonic() + 120
    while not (items and isinstance(items[-1], StreamEnd)):
        assert time.monotonic() < deadline, "the request did not end"
        items += seq.poll()
        if abort_after is not None and len(items) >= abort_after:
            seq.abort()
        time.sleep(0.005)
    tokens = items[:-1]
    return "".join(text for _, text in tokens), tokens, items[-1], seq


def test_it_reports_the_model_it_serves_and_the_backend_checks_it(sglang, backend):
    assert backend.served["architectures"] == ["LlamaForCausalLM"] and backend.served["version"] == "0.5.23"
    assert backend.served_model == sglang.served_path  # a local path, not the Hugging Face repo
    SGLangBackend(get_model(MODEL), sglang.url, served_name=sglang.served_path)  # the right one passes
    with pytest.raises(ServedModelMismatch, match="not '/srv/other'"):
        SGLangBackend(get_model(MODEL), sglang.url, served_name="/srv/other")
    with pytest.raises(ServedModelMismatch, match="architecture is .*LlamaForCausalLM.*tokenizer differs"):
        SGLangBackend(get_model("qwen2.5-coder-0.5b"), sglang.url)


def test_seeds_are_honoured_only_by_a_deterministic_server(backend):
    ids = prompt_ids(backend, "Write a poem about the sea.")
    runs = [generate(backend, ids, temperature=1.0, seed=42, max_new_tokens=24)[0] for _ in range(2)]
    assert backend.reproducible(0.0)
    assert backend.reproducible(1.0) is backend.deterministic
    if backend.deterministic:
        assert runs[0] == runs[1]
    else:
        assert runs[0] != runs[1]  # the seed is ignored: 12 tokens at temperature 1 differ


def test_a_request_that_starts_inside_a_call_block_is_constrained_by_the_rest_of_that_block(backend):
    ids = prompt_ids(backend, "What is the weather in Tokyo? Use a tool.", "[CALL] c2 [HEAD]")
    # The plain triggered tag: the server did not generate the trigger, so nothing is enforced.
    plain, _, _, _ = generate(backend, ids, structural_tag=call_structural_tag(["zz_lookup"]))
    assert not plain.startswith(" zz_lookup(")
    rest, _, end, _ = generate(backend, ids, structural_tag=call_structural_tag(["zz_lookup"], open_block=" c2 [HEAD]"))
    assert rest.startswith(" zz_lookup("), rest


def test_a_grammar_that_does_not_compile_ends_the_request_before_any_token(backend):
    ids = prompt_ids(backend, "Hello")
    bad = json.dumps({"type": "structural_tag", "format": {"type": "grammar", "grammar": "root ::= ("}})
    text, tokens, end, seq = generate(backend, ids, structural_tag=bad)
    assert tokens == [] and end.finish == "error"
    assert "Failed to compile structural_tag grammar" in end.message
    assert seq.n_tokens == len(ids)  # nothing of it joined the context


def test_an_abort_ends_the_stream_two_tokens_later_even_before_the_first_chunk(backend):
    ids = prompt_ids(backend, "Write a long story about a lighthouse.")
    _, tokens, end, seq = generate(backend, ids, abort_after=0, max_new_tokens=200)
    assert end == StreamEnd("abort", "Aborted")
    # Sent once the first chunk is in (an earlier abort is honoured by 0.5.23, but costs nothing
    # to defer): that chunk, then the two that slip through.
    assert 1 <= len(tokens) <= 4
    assert seq.n_tokens == len(ids) + len(tokens) and not seq.streaming


def test_a_repeated_prompt_is_served_from_the_prefix_cache(backend):
    ids = prompt_ids(backend, "Name three colours.")
    generate(backend, ids)
    *_, seq = generate(backend, ids)
    assert seq.submissions[0].cached_tokens >= len(ids) - 1


# -- whole tasks through the engine ----------------------------------------------------------
@pytest.fixture
def engine(sglang, start_engine):
    return start_engine(f"engine-sglang-{time.monotonic_ns()}", preload=MODEL, ASYNCLM_SGLANG_URL=sglang.url,
                        ASYNCLM_SGLANG_MODELS=MODEL, ASYNCLM_SGLANG_SERVED=f"{MODEL}={sglang.served_path}")


def final(task: Task, timeout: float = 120) -> Task:
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, timeout, f"task {task.pk} to end")
    task.refresh_from_db()
    return task


@pytest.mark.django_db(transaction=True)
def test_a_task_with_a_message_mid_stream_finishes_and_the_resubmission_hits_the_cache(engine, alice):
    task = submit_task(alice, prompt="List twenty animals, one per line.", model=MODEL, max_tokens=120,
                       temperature=0.0, top_p=1.0, seed=0)
    wait_for(lambda: TraceEvent.objects.filter(task=task, kind="token").count() >= 8, 120, "eight tokens")
    send_message(Task.objects.get(pk=task.pk), "Now say only: done.")
    task = final(task)
    assert task.status == "finished", task.status_reason
    events = list(TraceEvent.objects.filter(task=task).order_by("seq"))
    assert [e for e in events if e.kind == "interrupt_injected"]
    resubmitted = next(e for e in events if e.kind == "resubmitted")
    assert resubmitted.payload["cached_tokens"] >= 0.95 * resubmitted.payload["expected_cached"]
    assert task.metrics["reused_prompt_tokens"] >= 0 and task.metrics["reproducible"] is True  # greedy


@pytest.mark.django_db(transaction=True)
def test_a_task_at_temperature_above_zero_says_whether_it_is_reproducible(engine, sglang, alice):
    task = final(submit_task(alice, prompt="Say hello.", model=MODEL, max_tokens=12, temperature=0.8,
                             top_p=1.0, seed=3))
    assert task.status == "finished", task.status_reason
    deterministic = httpx.get(sglang.url + "/get_server_info").json()["enable_deterministic_inference"]
    assert task.metrics["reproducible"] is deterministic


@pytest.mark.django_db(transaction=True)
def test_a_server_with_another_model_fails_tasks_with_the_reason_and_the_health_bar_says_so(sglang, start_engine,
                                                                                            alice, redis_client):
    from engine import health

    engine_id = f"engine-sglang-wrong-{time.monotonic_ns()}"
    start_engine(engine_id, preload=MODEL, ASYNCLM_SGLANG_URL=sglang.url, ASYNCLM_SGLANG_MODELS=MODEL,
                 ASYNCLM_SGLANG_SERVED=f"{MODEL}=/srv/another-model")
    task = final(submit_task(alice, prompt="Say hello.", model=MODEL, max_tokens=8, temperature=0.0, top_p=1.0,
                             seed=0))
    assert task.status == "failed" and "does not serve smollm2-135m" in task.status_reason
    (beat,) = [b for b in health.alive(redis_client, "engine") if b["id"] == engine_id]
    assert "/srv/another-model" in beat["problems"][MODEL]


# -- the tuned model on a server: its base model plus the server's copy of the adapter ----------
def test_a_tuned_model_runs_on_the_server_with_its_adapter_by_name(tmp_path):
    """On the imitation only: the CPU path of SGLang 0.5.23 does not start with --enable-lora
    (README). The server gets the PEFT form of the shipped adapter (python -m finetune.peft); the
    imitation applies the shipped GGUF form, which is the same weights."""
    from django.conf import settings

    from engine.backends.llamacpp import LlamaCppBackend
    from engine.catalog import MODELS
    from engine.modelfiles import verified_path

    tuned = next(s for s in MODELS.values() if s.adapter is not None)
    adapter = settings.BASE_DIR / tuned.adapter.path
    proc, url = start_sglang_imitation(tuned.base, tmp_path, "--lora", f"{tuned.adapter.name}={adapter}")
    try:
        with pytest.raises(ServedModelMismatch, match="no LoRA adapter named 'other'"):
            SGLangBackend(tuned, url, lora="other")
        remote = SGLangBackend(tuned, url, lora=tuned.adapter.name)
        ids = prompt_ids(remote, "Write a short poem about a lighthouse keeper and his cat.")
        text, *_ = generate(remote, ids, max_new_tokens=24)
        assert httpx.get(url + "/_imitation/log").json()[-1]["lora_path"] == tuned.adapter.name
        # The embedded engine with the same adapter writes the same greedy answer.
        local = LlamaCppBackend(tuned, verified_path(tuned, settings.ASYNCLM_MODEL_DIR), adapter_path=adapter,
                                n_ctx=512)
        seq = local.open_sequence(ids)
        seq.append(ids)
        out = []
        for _ in range(24):
            token = int(seq.logits().argmax())
            if token in local.stop_ids():
                break
            out.append(token)
            seq.append([token])
        assert text == b"".join(local.token_bytes(t) for t in out).decode("utf-8", errors="replace")
        base_text, *_ = generate(SGLangBackend(get_model(tuned.base), url), ids, max_new_tokens=24)
        assert base_text != text  # the adapter changes the answer: it was applied
    finally:
        proc.kill()
