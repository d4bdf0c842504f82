"""The embedded model's prompt, tool latencies and bound, from a recorded trace."""

from types import SimpleNamespace

import pytest

from webapp.bench import embedded
from webapp.bench.scenarios import PlannedCall, Scenario

CALLS = [PlannedCall(0, "f", {"x": 1}, 100.0), PlannedCall(1, "f", {"x": 2}, 300.0)]
SCENARIO = Scenario("s", "parallel", "Do f for 1 and 2.", [{"name": "f", "kind": "simulated", "config": {}}], CALLS)


def ev(kind, t_ms, **payload):
    return SimpleNamespace(kind=kind, t_ms=t_ms, payload=payload)


def test_the_cheat_sheet_lists_the_calls_slowest_first_and_can_be_left_out():
    text = embedded.prompt(SCENARIO, cheat_sheet=True)
    assert text.startswith("Do f for 1 and 2.") and text.index("f(x=2)") < text.index("f(x=1)")
    assert embedded.prompt(SCENARIO, cheat_sheet=False) == "Do f for 1 and 2."


def test_tool_latencies_are_fixed_by_the_calls_arguments():
    (tool,) = embedded.tools(SCENARIO, seed=3)
    assert tool["config"]["latency_by_args"] == {'{"x": 1}': 100.0, '{"x": 2}': 300.0}
    assert tool["config"]["latency_scope"] == "bench|3|s" and "latency_by_call" not in tool["config"]


def two_calls_trace() -> list:
    return [ev("token", 0), ev("token", 20), ev("call_decoded", 20, call_id="c1", name="f", args={"x": 2}),
            ev("token", 40), ev("call_decoded", 40, call_id="c2", name="f", args={"x": 1}),
            ev("token", 60), ev("token", 80), ev("trap", 80),
            ev("interrupt_injected", 400, calls=["c1", "c2"], tokens=10, ms=5.0),
            ev("token", 420), ev("token", 440)]


def test_the_bound_uses_what_the_model_wrote_at_its_measured_rate():
    # Two tokens then call c1 (x=2, 300 ms), one token and c2 (x=1, 100 ms), a 2-token trap, both
    # results in one 10-token frame that took 5 ms, then a 2-token answer; 20 ms per token.
    events = two_calls_trace()
    assert embedded.token_ms(events) == pytest.approx(20.0)  # the wait and the injection are not decoding
    assert embedded.inject_ms(events) == pytest.approx(0.5)
    bound, per_token, g = embedded.bound(SCENARIO, "async", events)
    # G = 40 and 20 ms, E = 300 and 100, I = 5 tokens * 0.5 ms each, trap 40 ms, final 40 ms:
    # c1 back at 40 + 300 = 340, c2 at 60 + 100 = 160; write both (60), trap (100), wait for c2
    # (160), inject it (162.5), trap again (202.5), wait for c1 (340), inject it (342.5), answer
    # (382.5), minus the first token's 20 ms.
    assert bound == pytest.approx(362.5) and per_token == pytest.approx(20.0) and g == pytest.approx(30.0)
    sync, _, _ = embedded.bound(SCENARIO, "sync", events)
    assert sync == pytest.approx(40 + 300 + 2.5 + 20 + 100 + 2.5 + 40 - 20)


def test_prose_while_waiting_counts_as_a_trap_and_no_answer_ends_the_bound_at_the_last_token():
    # One call (x=2, 300 ms), two tokens of prose while it runs, the result, then the turn ends.
    events = [ev("token", 0), ev("token", 20), ev("call_decoded", 20, call_id="c1", name="f", args={"x": 2}),
              ev("token", 40), ev("token", 60), ev("interrupt_injected", 400, calls=["c1"], tokens=4, ms=2.0)]
    bound, _, _ = embedded.bound(SCENARIO, "async", events)
    assert bound == pytest.approx(60.0)  # = the measured first -> last token: nothing after 60 counts


def test_a_refused_call_still_cost_its_tokens():
    # The model wrote a call to a function it does not have: refused at once, the error injected.
    events = [ev("token", 0), ev("token", 20), ev("token", 40), ev("call_error", 40, call_id="c1", name="nope"),
              ev("interrupt_injected", 50, calls=["c1"], tokens=4, ms=2.0), ev("token", 70), ev("token", 90)]
    bound, _, _ = embedded.bound(SCENARIO, "sync", events)
    assert bound == pytest.approx(3 * 20 + 2.0 + 2 * 20 - 20)  # its 3 tokens, the error frame, the answer


def test_it_computes_the_bound_at_a_given_standalone_rate():
    # The trace of test_the_bound_uses_what_the_model_wrote_at_its_measured_rate (20 ms per token
    # measured), timed at a standalone decode rate of 10 ms per token: G = 2 and 1 tokens = 20 and
    # 10 ms, the trap 2 tokens = 20 ms, the answer 2 tokens = 20 ms; injection as measured, 2.5 ms
    # per result.
    events = two_calls_trace()
    bound, per_token, g = embedded.bound(SCENARIO, "async", events, per_token=10.0)
    # c1 (300 ms) written by 20, back at 320; c2 (100 ms) by 30, back at 130; trap to 50, wait for
    # c2 (130), inject (132.5); trap (152.5), wait for c1 (320), inject (322.5); answer (342.5);
    # minus the first token's 10 ms.
    assert bound == pytest.approx(332.5) and per_token == 10.0 and g == pytest.approx(15.0)
    sync, _, _ = embedded.bound(SCENARIO, "sync", events, per_token=10.0)
    assert sync == pytest.approx(20 + 300 + 2.5 + 10 + 100 + 2.5 + 20 - 10)
    measured, _, _ = embedded.bound(SCENARIO, "async", events)
    assert measured == pytest.approx(362.5)  # the bound at the run's own rate is unchanged


def test_the_cheat_sheet_leaves_out_the_call_a_persons_message_will_ask_for():
    scenario = Scenario("h", "human_message", "Weather in Paris?", [], [
        PlannedCall(0, "get_weather", {"city": "Paris"}, 100.0), PlannedCall(1, "get_weather", {"city": "Oslo"}, 90.0)],
        message="Also check Oslo.", message_calls=(1,))
    text = embedded.prompt(scenario, cheat_sheet=True)
    assert "get_weather(city='Paris')" in text and "Oslo" not in text


def test_web_profile_tools_draw_from_it_and_time_out_well_after_its_slowest_call():
    web = Scenario("s", "parallel", "q", [{"name": "f", "kind": "simulated", "config": {}}], CALLS, profile="web")
    (tool,) = embedded.tools(web, seed=0)
    assert tool["config"]["latency_ms"]["max"] == 5000 and tool["timeout_s"] >= 10 > 5000 / 1000
    (paper,) = embedded.tools(SCENARIO, seed=0)
    assert paper["config"]["latency_ms"]["mean"] == 110 and paper["timeout_s"] == 10
    from webapp.bench import plan

    assert all(t["timeout_s"] * 1000 > 5000 for t in plan.tools(web))
