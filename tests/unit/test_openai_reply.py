"""The OpenAI-compatible endpoint's pure parts: a trace folded into a reply, a request checked."""

import json

import pytest

from webapp.openai_api.errors import ApiError
from webapp.openai_api.reply import Reply
from webapp.openai_api.request import parse


def ev(kind: str, **payload) -> dict:
    return {"kind": kind, "payload": payload}


def tokens(text: str, size: int = 3) -> list[dict]:
    """Text in small pieces, so that markers are split across tokens as a tokenizer would."""
    return [ev("token", text=text[i:i + size]) for i in range(0, len(text), size)]


TRACE = [
    ev("prefill", prompt_tokens=410, reused_tokens=0),
    *tokens(' [CALL] c1 [HEAD] get_weather(city="Paris") [END] [CALL] c2 [HEAD] get_stock(sym="AAPL") [END]'),
    ev("call_decoded", call_id="c1", name="get_weather", args={"city": "Paris"}),
    ev("call_decoded", call_id="c2", name="get_stock", args={"sym": "AAPL"}),
    *tokens(" Checking [TRAP][END]"),
    ev("call_result", call_id="c2", ok=True, injected='{"price": 190}'),
    ev("call_result", call_id="c1", ok=False, error="timeout", injected='{"error": "timeout"}'),
    ev("interrupt_injected", calls=["c2", "c1"], text="..."),
    *tokens(" AAPL is at 190; Paris timed out."),
    ev("finish", status="finished", finish_reason="stop",
       metrics={"prompt_tokens": 410, "tokens": 41, "injected_tokens": 23}),
]


def test_it_keeps_what_the_model_wrote_outside_its_blocks_as_content():
    reply = Reply()
    deltas = [d for e in TRACE for d in reply.feed(e)]
    content = "".join(d.get("content", "") for d in deltas)
    assert content == reply.content == "Checking  AAPL is at 190; Paris timed out."
    assert "[" not in content


def test_it_reports_each_call_as_a_tool_call_delta_in_order_and_each_result():
    reply = Reply()
    deltas = [d for e in TRACE for d in reply.feed(e)]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [(c["index"], c["id"], c["function"]["name"]) for c in calls] == [(0, "c1", "get_weather"),
                                                                             (1, "c2", "get_stock")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    results = [d["asynclm_tool_result"] for d in deltas if "asynclm_tool_result" in d]
    assert [(r["tool_call_id"], r["ok"], r["error"]) for r in results] == [("c2", True, ""), ("c1", False, "timeout")]


def test_the_whole_message_says_what_the_stream_said():
    reply = Reply()
    for event in TRACE:
        reply.feed(event)
    message = reply.message()
    assert message["content"] == reply.content
    assert [c["id"] for c in message["tool_calls"]] == ["c1", "c2"]
    assert len(message["asynclm_tool_results"]) == 2
    assert reply.finish_reason == "stop"
    assert reply.usage() == {"prompt_tokens": 410, "completion_tokens": 41, "total_tokens": 451,
                             "asynclm_injected_tokens": 23}


def test_a_call_decoded_again_after_a_resume_is_reported_once():
    reply = Reply()
    first = reply.feed(ev("call_decoded", call_id="c1", name="f", args={}))
    again = reply.feed(ev("call_decoded", call_id="c1", name="f", args={}))
    assert first and again == []


@pytest.mark.parametrize("engine_reason, openai_reason", [("stop", "stop"), ("length", "length"),
                                                           ("context_full", "length"), ("time_limit", "length")])
def test_the_engines_reasons_map_to_openais(engine_reason, openai_reason):
    reply = Reply()
    reply.feed(ev("finish", status="finished", finish_reason=engine_reason, metrics={}))
    assert reply.finish_reason == openai_reason


def body(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


@pytest.mark.parametrize("raw, param, words", [
    (b"{", None, "not valid JSON"),
    (b"[]", None, "JSON object"),
    (json.dumps({"model": "m", "messages": []}).encode(), "messages", "at least 1"),
    (body(temperature=3), "temperature", "less than or equal"),
    (body(asynclm_mode="fast"), "asynclm_mode", "async"),
    (body(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "tool_packs"),
    (body(n=2), "n", "n must be 1"),
    (body(stop=["\n"]), "stop", "not supported"),
    (body(tool_packs=[""]), "tool_packs", "1 to 100"),
])
def test_a_bad_request_is_refused_with_the_parameter_named(raw, param, words):
    with pytest.raises(ApiError) as caught:
        parse(raw)
    assert caught.value.status == 400 and caught.value.param == param
    assert words in caught.value.message


def test_the_last_message_becomes_the_prompt_and_the_rest_the_conversation():
    chat = parse(json.dumps({"model": "m", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Weather?"},
    ]}).encode())
    conversation, prompt = chat.turns()
    assert prompt == "Weather?"
    assert conversation == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
                            {"role": "assistant", "content": "Hi."}]


@pytest.mark.parametrize("messages, words", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
    ([{"role": "tool", "content": "42"}, {"role": "user", "content": "a"}], "client-side tools"),
    ([{"role": "user", "content": "a\x00b"}], "NUL"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "only text"),
    ([{"role": "user", "content": "x" * 9000}], "limit"),
])
def test_messages_the_service_cannot_take_are_refused(messages, words):
    chat = parse(json.dumps({"model": "m", "messages": messages}).encode())
    with pytest.raises(ApiError) as caught:
        chat.turns()
    assert caught.value.status == 400 and words in caught.value.message
