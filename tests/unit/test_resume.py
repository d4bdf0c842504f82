"""A task whose engine died is rebuilt from its record by another engine and goes on: the same
context token for token, its events numbered on from the record's, each call's result in the
context once, and only calls without a result sent to a worker again."""

import pytest

from engine.messages import Budgets, CallReport, TaskSubmission
from engine.resume import History, RecordedFrame, ResumeError, history_from_events
from engine.scheduler import Scheduler
from tests.helpers import Clock
from tests.scripted import ScriptedBackend
from tests.unit.test_scheduler_calls import F, G

SCRIPT = [b"[CALL] a [HEAD] f(a=1) [END]", b" [CALL] b [HEAD] g(x=2) [END]", b"[TRAP][END]", b" The", b" answer",
          b" is", b" 3."]
RESULTS = {"a": {"v": 1}, "b": {"v": 2}}


def submission(mode: str = "async") -> TaskSubmission:
    return TaskSubmission(1, "scripted", "go", 200, 1000.0, mode=mode, tools=[F.to_dict(), G.to_dict()],
                          budgets=Budgets())


def new_scheduler(backend: ScriptedBackend, engine_id: str) -> Scheduler:
    return Scheduler(lambda name: backend, engine_id=engine_id, clock=Clock(), wall=lambda: 1000.0)


def drive(scheduler: Scheduler, events: list, *, answer: set[str], stop_after: int | None = None) -> list[str]:
    """Step until the task ends (or `stop_after` events exist), answering dispatched calls in
    `answer` at once; returns the ids of every call dispatched."""
    dispatched = []
    for _ in range(2000):
        if scheduler.task(1) is None or (stop_after is not None and len(events) >= stop_after):
            break
        events += scheduler.step()
        for request in scheduler.take_dispatches():
            dispatched.append(request.call_id)
            if request.call_id in answer:
                events += scheduler.deliver(1, request.call_id, ok=True, value=RESULTS[request.call_id])
    return dispatched


def context(backend: ScriptedBackend, events: list) -> str:
    return events[-1].payload["text"]


@pytest.fixture
def whole_run():
    backend = ScriptedBackend(list(SCRIPT))
    scheduler = new_scheduler(backend, "engine-a")
    events = scheduler.submit(submission())
    drive(scheduler, events, answer={"a", "b"})
    assert events[-1].kind == "finish" and events[-1].payload["status"] == "finished"
    return events


def resume(events: list, late: dict | None = None) -> tuple[list, list[str], ScriptedBackend]:
    backend = ScriptedBackend(list(SCRIPT))
    scheduler = new_scheduler(backend, "engine-b")
    history = history_from_events("engine-a", [e.to_dict() for e in events])
    scheduler.resume(submission(), history, late)
    after: list = []
    dispatched = drive(scheduler, after, answer={"a", "b"})
    return after, dispatched, backend


@pytest.mark.parametrize("cut", ["after the first call", "parked on the trap", "after the first frame",
                                 "mid-answer"])
def test_it_rebuilds_the_same_context_and_goes_on(whole_run, cut):
    kinds = [e.kind for e in whole_run]
    results = [i for i, k in enumerate(kinds) if k == "call_result"]
    frames = [i for i, k in enumerate(kinds) if k == "interrupt_injected"]
    tokens = [i for i, k in enumerate(kinds) if k == "token"]
    at = {"after the first call": kinds.index("call_dispatched") + 1,
          "parked on the trap": results[0],  # a's result is not in the record
          "after the first frame": frames[0] + 1,
          "mid-answer": tokens[-2] + 1}[cut]
    record = whole_run[:at]
    after, dispatched, _ = resume(record)
    assert after[0].kind == "resumed" and after[0].seq == record[-1].seq + 1
    assert [e.seq for e in after] == list(range(after[0].seq, after[0].seq + len(after)))  # dense
    assert after[-1].payload["status"] == "finished"
    assert after[-1].payload["text"] == whole_run[-1].payload["text"]  # one coherent context
    recorded = {e.payload["call_id"] for e in record if e.kind == "call_result"}
    assert not set(dispatched) & recorded  # a call with a recorded result never runs again
    injected = [c for e in record + after if e.kind == "interrupt_injected" for c in e.payload["calls"]]
    assert sorted(injected) == ["a", "b"]  # each result went into the context once


def test_a_result_that_reached_the_dead_engine_is_used_instead_of_running_the_call_again(whole_run):
    kinds = [e.kind for e in whole_run]
    record = whole_run[: kinds.index("call_result")]  # both calls dispatched, no result recorded
    late = {"a": CallReport(1, "a", "finished", "w/1", 0.0, ok=True, result=RESULTS["a"])}
    after, dispatched, _ = resume(record, late)
    assert dispatched == ["b"]
    assert after[-1].payload["text"] == whole_run[-1].payload["text"]


def test_a_record_with_gaps_or_an_end_is_refused():
    start = {"seq": 1, "kind": "status", "payload": {"started_at": 1.0}}
    with pytest.raises(ResumeError, match="gaps"):
        history_from_events("e", [start, {"seq": 3, "kind": "token", "payload": {"id": 1}}])
    with pytest.raises(ResumeError, match="already ended"):
        history_from_events("e", [start, {"seq": 2, "kind": "finish", "payload": {}}])


def test_a_record_the_replay_cannot_follow_fails_the_task_with_the_reason():
    backend = ScriptedBackend(list(SCRIPT))
    scheduler = new_scheduler(backend, "engine-b")
    history = History("engine-a", 1000.0, 5, tokens=[1], frames=[])
    history.frames.append(RecordedFrame(1, ("zz",), ()))
    scheduler.resume(submission(), history)
    events: list = []
    drive(scheduler, events, answer=set())
    assert events[-1].kind == "finish" and events[-1].payload["status"] == "failed"
    assert "could not resume" in events[-1].payload["reason"] and "zz" in events[-1].payload["reason"]
    assert events[-1].seq == 6


def test_a_simulated_task_resumes_in_a_process_that_numbers_its_pieces_differently():
    import json
    import time

    from engine.backends.simulated import SimulatedBackend
    from engine.catalog import get_model

    plan = {"calls": [{"id": "a", "call": "f(a=1)", "e": 50, "after": None},
                      {"id": "b", "call": "g(x=2)", "e": 300, "after": None}],
            "final": "Both are done.", "token_ms": 0, "inject_ms": 0}
    sub = TaskSubmission(1, "simulated", f"q\n[plan] {json.dumps(plan)}", 400, time.time(), mode="async",
                         tools=[F.to_dict(), G.to_dict()], budgets=Budgets())

    def run_on(backend, events, history=None):
        scheduler = Scheduler(lambda name: backend, wall=time.time)
        if history is None:
            events += scheduler.submit(sub)
        else:
            scheduler.resume(sub, history)
        for _ in range(3000):
            if scheduler.task(1) is None or (history is None and len(events) >= 12):
                break
            events += scheduler.step()
            for request in scheduler.take_dispatches():
                events += scheduler.deliver(1, request.call_id, ok=True, value=1)
        return events

    whole = run_on(SimulatedBackend(get_model("simulated")), [])
    cut = whole[:12]
    other = SimulatedBackend(get_model("simulated"))
    other.tokenize("an unrelated text first, so its pieces get other ids")
    after = run_on(other, [], history_from_events("engine-a", [e.to_dict() for e in cut]))
    assert after[-1].payload["status"] == "finished", after[-1].payload
    assert after[-1].payload["text"].endswith("Both are done.")
    written = [e.payload["call_id"] for e in cut + after if e.kind == "call_decoded"]
    assert sorted(written) == ["a", "b"]  # each call written once across the two engines
