"""The OpenAI-compatible endpoint through the real processes (daphne, an engine, a Celery worker,
Redis), driven by OpenAI's own Python client. Tool calls run on the simulated decoder (a plan in
the prompt) so that they happen whatever a small model would write; plain chat runs on the real
test model."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from django.conf import settings
from openai.types.chat import ChatCompletionChunk

from tests.conftest import subprocess_env
from tests.helpers import wait_for
from webapp.api.models import ApiToken
from webapp.runs.models import Task

pytestmark = pytest.mark.django_db(transaction=True)

PLAN = {"calls": [{"id": "c1", "call": "get_weather(city='Paris')", "e": 300, "after": None},
                  {"id": "c2", "call": "get_stock_price(symbol='AAPL')", "e": 150, "after": None}],
        "final": "Paris is sunny and AAPL is up.", "token_ms": 5, "wait": "trap"}
PROMPT = f"Weather in Paris and the AAPL price?\n[plan] {json.dumps(PLAN)}\n"


@pytest.fixture
def web_server_env() -> dict[str, str]:
    return {"ASYNCLM_OFFER_BENCHMARK_DECODERS": "true"}  # the simulated decoder is in the model list


@pytest.fixture
def token(alice) -> str:
    return ApiToken.issue(alice, "tests")[1]


@pytest.fixture
def oai(web_server, token) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{web_server}/v1", api_key=token, max_retries=0, timeout=60)


@pytest.fixture
def engine(start_engine, test_model):
    return start_engine("engine-openai", preload=test_model)


def test_it_lists_the_models_a_user_may_pick(oai, test_model):
    names = [m.id for m in oai.models.list()]
    assert test_model in names and "simulated" in names
    assert oai.models.retrieve(test_model).id == test_model


def test_a_plain_chat_on_the_real_model_answers_and_is_the_callers_task(oai, engine, test_model, alice):
    reply = oai.chat.completions.create(model=test_model, max_tokens=24, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
    ])
    assert reply.object == "chat.completion" and reply.model == test_model
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 20
    task = Task.objects.get(pk=reply.model_extra["asynclm"]["task_id"])
    assert task.owner == alice and task.status == "finished" and task.prompt == "Name a colour."
    assert [m["role"] for m in task.conversation] == ["system", "user", "assistant"]
    assert choice.message.content.strip() in task.final_text


def test_a_streamed_reply_carries_text_calls_and_results_and_ends_with_stop(oai, start_engine, celery_worker_proc,
                                                                             demo_pack):
    start_engine("engine-openai-sim", preload="simulated")
    stream = oai.chat.completions.create(model="simulated", messages=[{"role": "user", "content": PROMPT}],
                                         stream=True, stream_options={"include_usage": True},
                                         extra_body={"tool_packs": ["demo"], "asynclm_mode": "async"})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == PLAN["final"]
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.index, tc.id, tc.function.name) for tc in calls] == [(0, "c1", "get_weather"),
                                                                     (1, "c2", "get_stock_price")]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    results = [c.choices[0].delta.model_extra["asynclm_tool_result"] for c in chunks
               if c.choices and "asynclm_tool_result" in (c.choices[0].delta.model_extra or {})]
    assert sorted(r["tool_call_id"] for r in results) == ["c1", "c2"] and all(r["ok"] for r in results)
    # each result arrives after its call, and text follows the results (it was injected, then read)
    ends = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(ends) == 1 and ends[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_extra["asynclm_injected_tokens"] > 0
    assert len({c.id for c in chunks}) == 1

    whole = oai.chat.completions.create(model="simulated", messages=[{"role": "user", "content": PROMPT}],
                                        extra_body={"tool_packs": ["demo"]})
    message = whole.choices[0].message
    assert message.content == content and [tc.function.name for tc in message.tool_calls] == [
        "get_weather", "get_stock_price"]
    assert whole.choices[0].finish_reason == "stop"


def test_every_streamed_chunk_has_openais_chunk_shape(web_server, token, start_engine, celery_worker_proc,
                                                      demo_pack):
    start_engine("engine-openai-shape", preload="simulated")
    lines = []
    with httpx.stream("POST", f"{web_server}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {token}"},
                      json={"model": "simulated", "stream": True, "tool_packs": ["demo"],
                            "messages": [{"role": "user", "content": PROMPT}]}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    documents = [json.loads(line.removeprefix("data: ")) for line in lines[:-1] if not line.startswith(":")]
    assert documents
    for document in documents:
        assert set(document) >= {"id", "object", "created", "model", "choices"}
        assert document["object"] == "chat.completion.chunk" and isinstance(document["created"], int)
        ChatCompletionChunk.model_validate(document)  # OpenAI's own type for a chunk
        for choice in document["choices"]:
            assert set(choice) >= {"index", "delta", "finish_reason"}
            assert choice["finish_reason"] in (None, "stop", "length")
            for call in choice["delta"].get("tool_calls", []):
                assert set(call) == {"index", "id", "type", "function"} and call["type"] == "function"
                assert set(call["function"]) == {"name", "arguments"}
                json.loads(call["function"]["arguments"])
    assert documents[0]["choices"][0]["delta"]["role"] == "assistant"


def test_a_client_that_leaves_cancels_its_task(web_server, token, start_engine, alice):
    start_engine("engine-openai-leave", preload="simulated")
    slow = {"calls": [], "final": "word " * 200, "token_ms": 50}
    prompt = f"Go.\n[plan] {json.dumps(slow)}\n"
    with httpx.stream("POST", f"{web_server}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {token}"},
                      json={"model": "simulated", "stream": True, "max_tokens": 1000,
                            "messages": [{"role": "user", "content": prompt}]}) as response:
        for line in response.iter_lines():
            if '"content":"word' in line:
                break
    task = Task.objects.get(owner=alice)
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 30, "the task to end")
    task.refresh_from_db()
    assert task.status == "cancelled" and "client" in task.status_reason


def test_a_client_that_gives_up_waiting_for_a_whole_reply_cancels_its_task(web_server, token, start_engine, alice):
    start_engine("engine-openai-timeout", preload="simulated")
    slow = {"calls": [], "final": "word " * 200, "token_ms": 50}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{web_server}/v1/chat/completions", timeout=3, headers={"Authorization": f"Bearer {token}"},
                   json={"model": "simulated", "max_tokens": 1000,
                         "messages": [{"role": "user", "content": f"Go.\n[plan] {json.dumps(slow)}\n"}]})
    task = Task.objects.get(owner=alice)
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 30, "the task to end")
    task.refresh_from_db()
    assert task.status == "cancelled" and "client" in task.status_reason


@pytest.mark.parametrize("fields, status, words", [
    ({"model": "no-such-model"}, 404, "does not exist"),
    ({"asynclm_mode": "fast"}, 400, "asynclm_mode"),
    ({"tool_packs": ["nope"]}, 400, "unknown tool pack"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, 400, "client-side tools"),
    ({"max_tokens": 10**6}, 400, "max_tokens"),
])
def test_bad_requests_get_openais_error_shape(oai, test_model, fields, status, words):
    request = {"model": test_model, "messages": [{"role": "user", "content": "hi"}], **fields}
    with pytest.raises(openai.APIStatusError) as caught:
        oai.chat.completions.create(**{k: request.pop(k) for k in ("model", "messages")}, extra_body=request)
    assert caught.value.status_code == status
    error = caught.value.body
    assert set(error) >= {"message", "type", "param", "code"} and words in error["message"]
    assert not Task.objects.exists()


def test_a_missing_or_wrong_token_is_a_401(web_server, test_model):
    for key in ("", "alm_wrong"):
        client = openai.OpenAI(base_url=f"{web_server}/v1", api_key=key or "x", max_retries=0)
        if not key:
            response = httpx.post(f"{web_server}/v1/chat/completions", json={})
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
            continue
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


class TestRateLimits:
    @pytest.fixture
    def web_server_env(self) -> dict[str, str]:
        return {"ASYNCLM_TASK_RATE": "2/m"}

    def test_a_caller_over_the_task_rate_gets_a_429(self, oai, test_model):
        for _ in range(2):
            oai.chat.completions.create(model=test_model, messages=[{"role": "user", "content": "hi"}],
                                        stream=True).close()
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as caught:
            oai.chat.completions.create(model=test_model, messages=[{"role": "user", "content": "hi"}])
        assert time.monotonic() - started < 10
        assert caught.value.body["code"] == "rate_limit_exceeded"
        assert Task.objects.count() == 2


def readme_snippets() -> list[tuple[str, str]]:
    """The fenced blocks of the README's "Use it from your code" section: (language, code)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Use it from your code", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def test_the_readmes_snippets_run_as_written(web_server, token, start_engine, celery_worker_proc, demo_pack,
                                            tmp_path):
    from tests.integration.test_mcp_tools import McpHttpServers

    mcp_servers = McpHttpServers(tmp_path)
    start_engine("engine-openai-readme", preload=settings.ASYNCLM_DEFAULT_MODEL)
    snippets = readme_snippets()
    assert [lang for lang, _ in snippets] == ["sh", "sh", "sh", "python"]
    setup, add_mcp, curl_snippet, client_snippet = (code for _, code in snippets)
    assert "export ASYNCLM_URL=" in setup and "export MCP_URL=" in setup  # what a reader sets; the test sets it
    try:
        # the test's database and Redis, as a reader's shell has their service's
        env = subprocess_env(ASYNCLM_URL=web_server, ASYNCLM_TOKEN=token, MCP_URL=mcp_servers())
        added = subprocess.run(["bash", "-c", add_mcp], env=env, cwd=settings.BASE_DIR, capture_output=True,
                               text=True, timeout=120)
        assert added.returncode == 0, added.stderr
        assert "pack mcp-weather: 7 new" in added.stdout
    finally:
        for proc in mcp_servers.procs.values():
            proc.kill()
    curl = subprocess.run(["bash", "-c", curl_snippet], env=env, capture_output=True, text=True, timeout=120)
    assert curl.returncode == 0, curl.stderr + curl.stdout
    reply = json.loads(curl.stdout)
    assert reply["choices"][0]["finish_reason"] in ("stop", "length") and reply["asynclm"]["status"] == "finished"
    client = subprocess.run([sys.executable, "-c", client_snippet], env=env, capture_output=True, text=True,
                            timeout=120)
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip()
