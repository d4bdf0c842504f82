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


def test_the_bound_uses_what_the_model_wrote_at_its_measured_rate():
    # Two tokens then call c1 (x=2, 300 ms), one token and c2 (x=1, 100 ms), a 2-token trap, both
    # results in one 10-token frame that took 5 ms, then a 2-token answer; 20 ms per token.
    events = [ev("token", 0), ev("token", 20), ev("call_decoded", 20, call_id="c1", name="f", args={"x": 2}),
              ev("token", 40), ev("call_decoded", 40, call_id="c2", name="f", args={"x": 1}),
              ev("token", 60), ev("token", 80), ev("trap", 80),
              ev("interrupt_injected", 400, calls=["c1", "c2"], tokens=10, ms=5.0),
              ev("token", 420), ev("token", 440)]
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
