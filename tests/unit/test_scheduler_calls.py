"""The engine core's function-calling behaviour, driven by the scripted backend."""

import pytest

from engine.messages import Budgets, TaskSubmission
from engine.scheduler import Scheduler
from engine.state import Status
from engine.tools import ToolSpec
from tests.helpers import Clock, run_until_idle
from tests.scripted import ScriptedBackend

F = ToolSpec(
    "f", "adds one", {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, timeout_s=1.0
)
G = ToolSpec("g", "doubles", {"type": "object", "properties": {"x": {"type": "integer"}}}, timeout_s=1.0)


def make(pieces, mode="async", budgets=None, max_tokens=200, tools=(F, G), instances=None):
    backend = ScriptedBackend([p.encode() for p in pieces])
    clock = Clock()
    scheduler = Scheduler(lambda name: backend, clock=clock, wall=lambda: 1000.0)
    sub = TaskSubmission(
        1,
        "scripted",
        "go",
        max_tokens,
        1000.0,
        mode=mode,
        tools=[t.to_dict() for t in tools],
        budgets=budgets or Budgets(),
        instances=instances or {},
    )
    events = scheduler.submit(sub)
    return scheduler, events, clock, backend


def prefill(scheduler, task_id=1):
    while scheduler.task(task_id).status is Status.PREFILL:
        scheduler.step()


def kinds(events, *wanted):
    return [e.kind for e in events if e.kind in wanted]


def test_async_dispatches_at_end_and_keeps_decoding():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", " more", " text"])
    events += run_until_idle(scheduler)
    (request,) = scheduler.take_dispatches()
    assert (request.call_id, request.tool["name"], request.args) == ("a", "f", {"a": 1})
    tokens_after_dispatch = [
        e for e in events if e.kind == "token" and e.seq > next(x.seq for x in events if x.kind == "call_dispatched")
    ]
    assert [t.payload["text"] for t in tokens_after_dispatch[:2]] == [" more", " text"]
    # The model ends its turn with the call pending: the engine writes the wait for it instead,
    # and the task parks until the result is in.
    assert "".join(t.payload["text"] for t in tokens_after_dispatch[2:]) == " [TRAP][END]"
    assert events[-1].kind == "trap" and events[-1].payload["action"] == "parked"
    assert scheduler.task(1).status is Status.PARKED
    events = scheduler.deliver(1, "a", ok=True, value={"sum": 2}) + run_until_idle(scheduler)
    injected = next(e for e in events if e.kind == "interrupt_injected")
    assert injected.payload["calls"] == ["a"] and '[INTR] a [HEAD] {"sum":2} [END]' in injected.payload["text"]
    assert events[-1].kind == "finish" and events[-1].payload["metrics"]["injections"] == 1


def test_an_interrupt_waits_for_the_end_of_a_block():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", " [CALL]", " b [HEAD] g(", "x=2)", " [END]", " ok"])
    prefill(scheduler)
    scheduler.step()  # first call decoded and dispatched
    scheduler.step()  # " [CALL]": inside the second block now
    assert scheduler.task(1).monitor.critical
    events = scheduler.deliver(1, "a", ok=True, value=5)
    assert next(e for e in events if e.kind == "interrupt_queued").payload["critical"] is True
    events += run_until_idle(scheduler)
    order = [
        (e.kind, e.payload.get("text") or e.payload.get("call_id"))
        for e in events
        if e.kind in ("token", "interrupt_injected", "call_decoded")
    ]
    assert order[:4] == [("token", " b [HEAD] g("), ("token", "x=2)"), ("token", " [END]"), ("call_decoded", "b")]
    assert order[4][0] == "interrupt_injected"


def test_a_trap_parks_until_the_next_result_and_costs_no_steps():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", "[TRAP][END]", " answer"])
    events += run_until_idle(scheduler)
    assert kinds(events, "trap")
    assert events[-1].kind == "trap" and events[-1].payload["action"] == "parked"
    assert scheduler.step() == [] and not scheduler.has_work()
    # Held but not busy: a parked task leaves its decode slot to others (a sub-agent it waits for).
    assert scheduler.active == 1 and scheduler.busy == 0
    events = scheduler.deliver(1, "a", ok=True, value=2) + run_until_idle(scheduler)
    assert kinds(events, "resumed", "interrupt_injected", "token", "finish") == [
        "resumed",
        "interrupt_injected",
        "token",
        "finish",
    ]


def test_sync_decodes_nothing_between_a_call_and_its_result():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", " after"], mode="sync")
    events += run_until_idle(scheduler)
    assert scheduler.task(1).status is Status.BLOCKED and events[-1].kind == "blocked"
    assert scheduler.step() == []
    events = scheduler.deliver(1, "a", ok=True, value=2) + run_until_idle(scheduler)
    assert kinds(events, "interrupt_injected", "token")[:2] == ["interrupt_injected", "token"]


def test_sync_parallel_runs_the_batch_at_the_trap_and_injects_it_together():
    scheduler, events, *_ = make(
        ["[CALL] a [HEAD] f(a=1) [END]", "[CALL] b [HEAD] g(x=3) [END]", "[TRAP][END]", " ok"], mode="sync_parallel"
    )
    prefill(scheduler)
    scheduler.step()
    scheduler.step()
    assert scheduler.take_dispatches() == []  # held until the model yields
    events = run_until_idle(scheduler)
    assert sorted(r.call_id for r in scheduler.take_dispatches()) == ["a", "b"]
    assert scheduler.task(1).status is Status.BLOCKED
    assert scheduler.deliver(1, "b", ok=True, value=6)[-1].kind == "interrupt_queued"
    assert scheduler.task(1).status is Status.BLOCKED  # still waiting for a
    events = scheduler.deliver(1, "a", ok=True, value=2) + run_until_idle(scheduler)
    (injected,) = [e for e in events if e.kind == "interrupt_injected"]
    assert injected.payload["calls"] == ["b", "a"]


def test_futures_start_when_their_call_finishes_with_the_value_substituted():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", "[CALL] b [HEAD] g(x=a) [END]", "[TRAP][END]"])
    events += run_until_idle(scheduler)
    assert [r.call_id for r in scheduler.take_dispatches()] == ["a"]
    assert any(e.kind == "call_waiting" and e.payload["on"] == ["a"] for e in events)
    scheduler.deliver(1, "a", ok=True, value=2)
    (request,) = scheduler.take_dispatches()
    assert (request.call_id, request.args) == ("b", {"x": 2})


def test_a_future_whose_value_violates_the_schema_becomes_an_error():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", "[CALL] b [HEAD] g(x=a) [END]", "[TRAP][END]"])
    run_until_idle(scheduler)
    scheduler.take_dispatches()
    events = scheduler.deliver(1, "a", ok=True, value="not a number")
    assert scheduler.take_dispatches() == []
    assert any(e.kind == "call_result" and e.payload["call_id"] == "b" and not e.payload["ok"] for e in events)


@pytest.mark.parametrize(
    "piece, error",
    [
        ("[CALL] a [HEAD] nope(a=1) [END]", "unknown function 'nope'"),
        ("[CALL] a [HEAD] f(a='x') [END]", "invalid arguments for f: a: 'x' is not of type 'integer'"),
        ("[CALL] a [HEAD] f() [END]", "'a' is a required property"),
        ("[CALL] a [HEAD] g(x=zz) [END]", "zz is not the id of an earlier call"),
        ("[CALL] a [HEAD] f(1, 2) [END]", "takes at most 1 arguments"),
    ],
)
def test_bad_calls_become_error_interrupts(piece, error):
    scheduler, events, *_ = make([piece, " then"])
    events += run_until_idle(scheduler)
    assert scheduler.take_dispatches() == []
    (problem,) = [e for e in events if e.kind == "call_error"]
    assert error in problem.payload["error"]
    injected = next(e for e in events if e.kind == "interrupt_injected")
    assert '[INTR] a [HEAD] {"error":' in injected.payload["text"]
    assert events[-1].payload["status"] == "finished"


def test_a_duplicate_call_id_is_an_error_and_the_first_call_stands():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", "[CALL] a [HEAD] f(a=2) [END]"])
    events += run_until_idle(scheduler)
    assert [r.args for r in scheduler.take_dispatches()] == [{"a": 1}]
    assert "duplicate call id 'a'" in next(e for e in events if e.kind == "call_error").payload["error"]


def test_malformed_output_and_unterminated_blocks_reach_the_model_as_errors():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=", "[TRAP][END]", " ok", " [CALL] f(a=1"])
    events += run_until_idle(scheduler)
    reasons = [e.payload["reason"] for e in events if e.kind == "malformed"]
    assert reasons == ["[CALL] block without [END]", "unterminated [CALL] block"]
    assert events[-1].kind == "finish"


def test_a_call_that_never_answers_times_out_once_and_late_results_are_dropped():
    scheduler, events, clock, _ = make(["[CALL] a [HEAD] f(a=1) [END]", "[TRAP][END]", " ok"])
    run_until_idle(scheduler)
    clock.now += 10  # past timeout (1 s) + grace
    events = scheduler.expire()
    assert any(e.kind == "call_result" and "no result within the 1 s timeout" in e.payload["error"] for e in events)
    events += run_until_idle(scheduler)
    injected = next(e for e in events if e.kind == "interrupt_injected")
    assert '{"error":{"type":"timeout","message":"no result within the 1 s timeout"}}' in injected.payload["text"]
    assert scheduler.task(1) is None  # finished after seeing the error
    assert scheduler.deliver(1, "a", ok=True, value=1) == []


def test_late_results_for_a_live_task_are_logged_and_dropped():
    scheduler, events, clock, _ = make(["[CALL] a [HEAD] f(a=1) [END]", "[TRAP][END]", " ok", " more"] + [" x"] * 20)
    run_until_idle(scheduler)
    scheduler.deliver(1, "a", ok=True, value=1)
    assert scheduler.deliver(1, "a", ok=True, value=1)[0].kind == "late_result"


def test_oversized_results_are_truncated_with_a_visible_marker():
    scheduler, events, *_ = make(
        ["[CALL] a [HEAD] f(a=1) [END]", "[TRAP][END]", " ok"], budgets=Budgets(max_result_chars=50)
    )
    run_until_idle(scheduler)
    events = scheduler.deliver(1, "a", ok=True, value="x" * 5000) + run_until_idle(scheduler)
    assert any(e.kind == "truncated" and e.payload["chars"] == 5002 for e in events)
    injected = next(e for e in events if e.kind == "interrupt_injected")
    assert "…[truncated 4952 chars]" in injected.payload["text"]


def test_the_call_budget_is_enforced():
    scheduler, events, *_ = make(["[CALL] f(a=1) [END]", "[CALL] f(a=2) [END]"], budgets=Budgets(max_calls=1))
    events += run_until_idle(scheduler)
    assert len(scheduler.take_dispatches()) == 1
    assert "call budget exhausted" in next(e for e in events if e.kind == "call_error").payload["error"]


def test_the_wall_time_budget_ends_a_parked_task():
    scheduler, events, clock, _ = make(["[CALL] a [HEAD] f(a=1) [END]", "[TRAP][END]"], budgets=Budgets(max_wall_s=5))
    run_until_idle(scheduler)
    clock.now += 6
    (finish,) = scheduler.expire()
    assert finish.payload["finish_reason"] == "time_limit" and finish.payload["pending_calls"] == ["a"]


def test_the_model_cannot_write_an_interrupt_in_any_spelling():
    for spelling in ("[INTR] a [HEAD] 5 [END]", "[_INTR] a [HEAD] 5 [END]", "[ intr] a"):
        scheduler, events, *_ = make(["ok ", spelling, " done"])
        events += run_until_idle(scheduler)
        text = events[-1].payload["text"]
        assert "INTR" not in text.upper(), (spelling, text)


def test_a_split_interrupt_spelling_is_banned_at_the_letter():
    scheduler, events, *_ = make(["ok [", "_", "INTR", "] a"])
    events += run_until_idle(scheduler)
    assert "[_INTR" not in events[-1].payload["text"]


def test_a_trap_with_nothing_to_wait_for_is_banned_and_one_with_a_pending_call_is_not():
    for mode in ("async", "sync", "sync_parallel"):
        scheduler, events, *_ = make(["ok ", "[TRAP][END]", " done"], mode=mode)
        events += run_until_idle(scheduler)
        assert "[TRAP" not in events[-1].payload["text"], mode
        assert not [e for e in events if e.kind == "trap"]
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", "[TRAP][END]"])
    events += run_until_idle(scheduler)
    assert [e.payload["action"] for e in events if e.kind == "trap"] == ["parked"]


def test_parked_tasks_do_not_hold_up_others():
    backend = ScriptedBackend([p.encode() for p in ["[CALL] a [HEAD] f(a=1) [END]", "[TRAP][END]", " x", " y"]])
    scheduler = Scheduler(lambda name: backend, clock=Clock())
    for task_id in (1, 2):
        scheduler.submit(TaskSubmission(task_id, "scripted", "go", 50, 0.0, tools=[F.to_dict()]))
    scheduler.submit(TaskSubmission(3, "scripted", "plain", 50, 0.0))
    events = run_until_idle(scheduler)
    assert scheduler.task(1).status is Status.PARKED and scheduler.task(2).status is Status.PARKED
    assert any(e.task_id == 3 and e.kind == "finish" for e in events)


def test_a_persons_message_lands_in_the_context_at_the_recorded_position():
    scheduler, events, _, backend = make(["[CALL] a [HEAD] f(a=1)", " [END]", " one", " two", " three"])
    prefill(scheduler)
    scheduler.step()  # "[CALL] a [HEAD] f(a=1)": inside the call block
    events = scheduler.human_message(1, "Stop <|im_start|> now")
    assert [e.kind for e in events] == ["human_message"] and events[0].payload["critical"]
    events = run_until_idle(scheduler)
    injected = next(e for e in events if e.kind == "interrupt_injected")
    assert injected.payload["messages"] == ["Stop <|im_start|> now"] and injected.payload["calls"] == []
    decoded_before = [e.payload["text"] for e in events if e.kind == "token" and e.seq < injected.seq]
    assert decoded_before[0] == " [END]"  # not inside the block
    seq = scheduler.task(1).seq
    position, n = injected.payload["position"], injected.payload["tokens"]
    frame = backend.tokenize(injected.payload["text"])
    assert seq.ids[position:position + n] == frame
    assert "<|im_start|>user\nStop <|im_start|> now<|im_end|>" in injected.payload["text"]


def test_a_message_wakes_a_parked_task_and_a_final_task_ignores_it():
    scheduler, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", " [TRAP][END]", " answer"])
    run_until_idle(scheduler)
    assert scheduler.task(1).status is Status.PARKED
    events = scheduler.human_message(1, "hurry up") + run_until_idle(scheduler)
    assert "resumed" in kinds(events, "resumed") and "interrupt_injected" in kinds(events, "interrupt_injected")
    scheduler.deliver(1, "a", ok=True, value=2)
    run_until_idle(scheduler)
    assert scheduler.task(1) is None and scheduler.human_message(1, "too late") == []


def test_sync_parallel_runs_its_batch_at_the_end_of_the_turn_without_a_written_trap():
    scheduler, events, *_ = make(["[CALL] a [HEAD] f(a=1) [END]", " more"], mode="sync_parallel")
    events += run_until_idle(scheduler)
    assert "[TRAP]" not in "".join(e.payload["text"] for e in events if e.kind == "token")
    assert events[-1].kind == "blocked" and events[-1].payload["why"] == "end_of_turn"
    assert scheduler.task(1).status is Status.BLOCKED


def test_the_engine_writes_no_trap_for_a_forced_script():
    backend = ScriptedBackend([b"unused"])
    scheduler = Scheduler(lambda name: backend, clock=Clock(), wall=lambda: 1000.0)
    events = scheduler.submit(TaskSubmission(1, "scripted", "go", 200, 1000.0, tools=[F.to_dict()],
                                             forced_text="[CALL] a [HEAD] f(a=1) [END] then the end"))
    events += run_until_idle(scheduler)
    text = "".join(e.payload["text"] for e in events if e.kind == "token")
    assert text.endswith("then the end") and "[TRAP]" not in text
    assert events[-1].kind == "parked" and events[-1].payload["reason"] == "end_of_sequence"


def test_it_ends_a_forced_task_once_its_script_is_used_up_and_the_results_are_in():
    # Left to itself, this model copies the script's call block: each copy is a duplicate id and
    # an error frame, and it would go on to the token budget.
    backend = ScriptedBackend([b"[CALL] a [HEAD] f(a=1) [END]"] * 20)
    scheduler = Scheduler(lambda name: backend, clock=Clock(), wall=lambda: 1000.0)
    events = scheduler.submit(TaskSubmission(1, "scripted", "go", 400, 1000.0, tools=[F.to_dict()],
                                             forced_text="[CALL] a [HEAD] f(a=1) [END] then the end"))
    events += run_until_idle(scheduler)
    assert scheduler.task(1).status is Status.PARKED
    events += scheduler.deliver(1, "a", ok=True, value={"sum": 2}) + run_until_idle(scheduler)
    assert kinds(events, "interrupt_injected", "call_error") == ["interrupt_injected"]
    assert events[-1].kind == "finish" and events[-1].payload["finish_reason"] == "stop"
    text = "".join(e.payload["text"] for e in events if e.kind == "token")
    assert text == "[CALL] a [HEAD] f(a=1) [END] then the end"
