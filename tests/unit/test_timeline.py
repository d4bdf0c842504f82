"""The trace's vocabulary and its reducer: call times, the model's lane and the overlap."""

import pytest

from engine.messages import TraceEvent
from engine.timeline import CallTimes, EventKind, Timeline, apply_call_event
from tests.helpers import run_until_idle
from tests.unit.test_scheduler_calls import make


def ev(seq, t_ms, kind, **payload):
    return TraceEvent(task_id=1, seq=seq, t_ms=t_ms, kind=kind, payload=payload)


def test_it_computes_the_overlap_of_decoding_and_running_calls_by_hand():
    # Decoding 0-100 (after a 10 ms prefill), parked 100-300, injecting 300-310, decoding 310-400.
    # Call a runs 50-350: it overlaps decoding 50-100 and 300-350 (injecting counts): 100 ms.
    # Call b runs 20-60, inside a's window from 50: the union counts 20-60 once: +30 ms (20-50).
    events = [
        ev(1, 0, "status", status="running"), ev(2, 10, "prefill", prompt_tokens=5, reused_tokens=0, ms=10),
        ev(3, 11, "token", i=1, id=7, text="x"),
        ev(4, 15, "call_decoded", call_id="a", name="f", args={"a": 1}, position=3, depends_on=[]),
        ev(5, 16, "call_dispatched", call_id="a", name="f", args={"a": 1}),
        ev(6, 17, "call_decoded", call_id="b", name="g", args={}, position=4, depends_on=[]),
        ev(7, 18, "call_dispatched", call_id="b", name="g", args={}),
        ev(8, 20, "call_started", call_id="b", worker="w", at_ms=20),
        ev(9, 50, "call_started", call_id="a", worker="w", at_ms=50),
        ev(10, 60, "call_finished", call_id="b", worker="w", at_ms=60),
        ev(11, 100, "trap", action="parked", pending=["a"]),
        ev(12, 295, "resumed", **{"from": "parked"}),
        ev(13, 310, "interrupt_injected", calls=["b"], messages=[], began_ms=300, position=9, tokens=5, ms=10.0,
           text=" [INTR] ..."),
        ev(14, 350, "call_finished", call_id="a", worker="w", at_ms=350),
        ev(15, 400, "finish", status="finished", reason="", finish_reason="stop", text="", metrics={}),
    ]
    timeline = Timeline.of(events)
    # prefill 0-10, decoding 10-100, parked 100-295, decoding 295-300, injecting 300-310, decoding 310-400
    assert [(lane.state, lane.start, lane.end) for lane in timeline.lanes] == [
        ("prefill", 0, 10), ("decoding", 10, 100), ("parked", 100, 295), ("decoding", 295, 300),
        ("injecting", 300, 310.0), ("decoding", 310.0, 400),
    ]
    # running: union(20-60, 50-350) = 20-350; busy within it: 20-100 (80) + 295-350 (55)
    assert timeline.overlap_ms() == 135.0
    a, b = timeline.calls["a"], timeline.calls["b"]
    assert (a.tool, a.decoded_ms, a.dispatched_ms, a.started_ms, a.finished_ms) == ("f", 15, 16, 50, 350)
    assert (b.status, b.injected_ms, b.worker) == ("running", 310, "w")  # no result event in this trace
    assert timeline.tokens == [11] and timeline.injected_tokens == 5


def test_a_call_still_running_counts_to_the_end():
    events = [ev(1, 0, "status", status="running"), ev(2, 0, "prefill", prompt_tokens=1, reused_tokens=0, ms=0),
              ev(3, 10, "call_decoded", call_id="a", name="f", args={}, position=1, depends_on=[]),
              ev(4, 20, "call_started", call_id="a", worker="w", at_ms=20),
              ev(5, 50, "token", i=1, id=1, text="x")]
    assert Timeline.of(events).overlap_ms(now=80) == 60.0


def test_it_applies_a_call_event_to_any_record():
    call = CallTimes("c1")
    apply_call_event(call, "call_dispatched", 5.0, {"call_id": "c1", "name": "f", "args": {"a": 1}})
    apply_call_event(call, "call_started", 6.0, {"call_id": "c1", "worker": "w1", "at_ms": 7.5})
    assert (call.status, call.started_ms) == ("running", 7.5)
    apply_call_event(call, "call_result", 9.0, {"call_id": "c1", "ok": False, "error": "boom",
                                                "error_type": "error", "injected": '{"error":1}'})
    assert (call.status, call.error, call.result) == ("error", "boom", {"error": 1})
    # A start reported after the result does not undo it.
    apply_call_event(call, "call_started", 10.0, {"call_id": "c1", "worker": "w2", "at_ms": 10})
    assert call.status == "error"


@pytest.mark.parametrize("mode", ["async", "sync", "sync_parallel"])
def test_every_event_the_engine_writes_is_in_the_vocabulary(mode):
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", " [CALL] b [HEAD] nope() [END]", "[TRAP][END]",
                                  " [CALL] x [HEAD", " done"], mode=mode)
    events += run_until_idle(scheduler)
    for call_id in ("a",):
        events += scheduler.deliver(1, call_id, ok=True, value="r" * 5000)
        events += scheduler.deliver(1, call_id, ok=True, value=1)  # late
    events += scheduler.human_message(1, "hello") + run_until_idle(scheduler)
    kinds = {e.kind for e in events}
    assert kinds <= set(EventKind)
    assert {"status", "prefill", "token", "call_decoded", "call_error", "call_result", "late_result",
            "interrupt_injected", "malformed", "finish"} <= kinds


def test_the_metrics_carry_the_overlap_the_timeline_measured():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", " one", " two", " three", "[TRAP][END]",
                                  " done"])
    while not any(e.kind == "call_dispatched" for e in events):
        events += scheduler.step()
    started = scheduler.event(1, "call_started", {"call_id": "a", "worker": "w", "at_ms": scheduler.task(1).ms})
    events += [started] + run_until_idle(scheduler)  # decodes " one two three", then parks on the trap
    ended = scheduler.event(1, "call_finished", {"call_id": "a", "worker": "w", "at_ms": scheduler.task(1).ms})
    events += [ended] + scheduler.deliver(1, "a", ok=True, value=2) + run_until_idle(scheduler)
    finish = events[-1]
    assert finish.kind == "finish"
    # The call ran while the model wrote three tokens and the trap, not while it was parked.
    lanes = Timeline.of(events).lanes
    decoding = next(lane for lane in lanes if lane.state == "decoding")
    parked = next(lane for lane in lanes if lane.state == "parked")
    assert finish.payload["metrics"]["overlap_ms"] == round(parked.start - started.payload["at_ms"], 1) > 0
    assert decoding.start < started.payload["at_ms"]
