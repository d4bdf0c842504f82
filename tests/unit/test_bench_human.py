"""The human_message scenario set: demo-pack questions on held-out values, a person's message
asking for one more call, and what became of it in a run."""

import json
import time
from types import SimpleNamespace

import pytest

from engine.keys import inbox_stream, trace_stream
from engine.messages import Control
from finetune.plans import CITIES, HELDOUT_CITIES, HELDOUT_SYMBOLS, SYMBOLS
from webapp.bench import embedded
from webapp.bench.checker import check_calls
from webapp.bench.human import human_scenario, message_outcome, scenario_index
from webapp.bench.runner import send_message_when_due
from webapp.bench.scenarios import HUMAN_MESSAGE, scenarios
from webapp.tools.demo import DEMO_TOOLS


def ev(kind, t_ms, **payload):
    return SimpleNamespace(kind=kind, t_ms=t_ms, payload=payload)


def test_it_builds_scenarios_from_heldout_values_with_a_message_asking_for_one_more_call():
    found = scenarios(HUMAN_MESSAGE, seed=0, limit=12)
    assert [s.id for s in found] == [f"human_message_{k}" for k in range(12)]
    demo = {t["name"]: t for t in DEMO_TOOLS if t["kind"] == "simulated"}
    for s in found:
        assert s.dataset == HUMAN_MESSAGE and s.message and s.question
        values = [v for c in s.calls for v in c.args.values()]
        assert values and all(v in HELDOUT_CITIES or v in HELDOUT_SYMBOLS for v in values), values
        assert not any(v in CITIES or v in SYMBOLS for v in values)  # never in a training trace
        (extra,) = [s.calls[i] for i in s.message_calls]
        assert extra is s.calls[-1] and next(iter(extra.args.values())) in s.message
        assert extra not in s.asked and len(s.asked) == len(s.calls) - 1
        assert next(iter(extra.args.values())) not in s.question
        for tool in s.tools:  # the demo pack's simulated tools, with their returns rules
            assert tool["kind"] == "simulated" and tool["config"]["returns"] == demo[tool["name"]]["config"]["returns"]
        assert {c.name for c in s.calls} <= {t["name"] for t in s.tools}
        assert all(30 <= c.latency_ms <= 500 for c in s.calls)  # the paper's profile by default
    assert scenario_index("human_message_11") == 11


def test_it_draws_the_message_scenarios_latencies_from_the_chosen_profile():
    paper, web = human_scenario(3, 0), human_scenario(3, 0, "web")
    assert paper.calls[-1].args == web.calls[-1].args and paper.message == web.message
    assert all(200 <= c.latency_ms <= 5000 for c in web.calls) and web.profile == "web"
    (tool, *_) = embedded.tools(web, seed=0)
    assert tool["config"]["latency_by_args"] and tool["timeout_s"] >= 10


def test_it_reads_from_the_trace_whether_the_message_was_taken_and_the_extra_call_made():
    s = human_scenario(1, 0)
    asked = [(c.name, c.args) for c in s.asked]
    extra = (s.calls[-1].name, s.calls[-1].args)
    events = [ev("token", 100), ev("token", 130), ev("call_dispatched", 130), ev("human_message", 180, text=s.message),
              ev("token", 190), ev("interrupt_injected", 200, calls=[], messages=[s.message], tokens=9, ms=2.0),
              ev("token", 260)]
    made = message_outcome(s, events, [*asked, extra])
    assert made["delivered"] and made["extra_call_made"] and made["text"] == s.message
    assert made["sent_ms"] == 80 and made["injected_ms"] == 100 and made["tokens_before"] == 2
    assert made["calls"] == [{"name": extra[0], "args": extra[1]}]
    assert not message_outcome(s, events, asked)["extra_call_made"]
    wrong = (extra[0], {k: v + "x" for k, v in extra[1].items()})  # the same function, other arguments
    assert not message_outcome(s, events, [*asked, wrong])["extra_call_made"]
    ended = message_outcome(s, [ev("token", 0), ev("token", 20)], asked)  # the task ended before the message
    assert not ended["delivered"] and ended["sent_ms"] is None and not ended["extra_call_made"]


def test_it_accepts_a_run_that_made_exactly_the_expected_calls_in_any_order():
    expected = [("f", {"x": 1}), ("g", {"y": 2})]
    assert check_calls(expected, list(reversed(expected))).valid
    missing = check_calls(expected, expected[:1])
    assert not missing.valid and "missing" in missing.error and '"g"' in missing.error
    assert not check_calls(expected, [*expected, ("f", {"x": 1})]).valid  # a repeat is one too many


class _Services:
    engine_id = "bench-engine-test"

    def dead(self):
        return ""


def _trace(client, task_id, kinds):
    for kind in kinds:
        client.xadd(trace_stream(task_id), {"e": json.dumps({"kind": kind})})


def _sent(client):
    return [Control.from_json(fields[b"c"]) for _, fields in client.xrange(inbox_stream(_Services.engine_id))]


@pytest.mark.django_db
def test_it_sends_the_message_to_the_engine_once_the_first_call_is_dispatched(redis_client):
    _trace(redis_client, 901, ["token", "token", "call_decoded", "call_dispatched", "token"])
    why = send_message_when_due(_Services(), redis_client, 901, "Also check Oslo.", time.monotonic() + 5)
    assert why == "first call dispatched"
    (control,) = _sent(redis_client)
    assert (control.task_id, control.action, control.text) == (901, "message", "Also check Oslo.")


@pytest.mark.django_db
def test_it_sends_the_message_after_some_tokens_when_no_call_comes_and_not_after_the_end(redis_client):
    _trace(redis_client, 902, ["token"] * 5)
    assert send_message_when_due(_Services(), redis_client, 902, "Hi.", time.monotonic() + 5, after_tokens=5) \
        == "5 tokens"
    _trace(redis_client, 903, ["token", "finish"])
    assert send_message_when_due(_Services(), redis_client, 903, "Too late.", time.monotonic() + 5) == ""
    assert [c.task_id for c in _sent(redis_client)] == [902]
