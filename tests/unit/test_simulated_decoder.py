"""The simulated decoder through the real engine core: it writes the plan's ready calls in LPT
order, traps only when it must wait, writes a dependent call only after its input was injected,
and answers once every result is in."""

import json
import time

import numpy as np

from engine.backends.simulated import SimulatedBackend
from engine.catalog import get_model
from engine.messages import Budgets, TaskSubmission
from engine.scheduler import Scheduler
from engine.tools import ToolSpec

F = ToolSpec("f", "f", {"type": "object", "properties": {"x": {"type": "integer"}}})

PLAN = {"calls": [{"id": "a", "call": "f(x=1)", "e": 50, "after": None},
                  {"id": "b", "call": "f(x=2)", "e": 300, "after": None},
                  {"id": "c", "call": "f(x=3)", "e": 100, "after": "a"}],
        "final": "All three are done.", "token_ms": 0, "inject_ms": 0}


def run(mode: str, plan=PLAN, results=None, prompt=None):
    backend = SimulatedBackend(get_model("simulated"))
    scheduler = Scheduler(lambda name: backend)
    prompt = f"question\n[plan] {json.dumps(plan)}" if prompt is None else prompt
    sub = TaskSubmission(1, "simulated", prompt, 400, time.time(), mode=mode,
                         tools=[F.to_dict()], budgets=Budgets())
    events = scheduler.submit(sub)
    for _ in range(2000):
        if not scheduler.has_work() and scheduler.task(1) is None:
            break
        events += scheduler.step()
        for request in scheduler.take_dispatches():
            events += scheduler.deliver(1, request.call_id, ok=True, value=(results or {}).get(request.call_id, 0))
        wait_while_busy(scheduler)
    return events


def wait_while_busy(scheduler: Scheduler) -> None:
    """What the engine loop does when no task could step: wait for the first busy sequence."""
    if not scheduler.worked:
        time.sleep(min(scheduler.idle_s() or 0.0, 0.05))


def order(events, kind):
    return [e.payload.get("call_id") for e in events if e.kind == kind]


def test_async_writes_ready_calls_in_lpt_order_and_a_dependent_call_after_its_input():
    events = run("async")
    assert order(events, "call_decoded") == ["b", "a", "c"]  # b (300 ms) before a (50 ms); c needs a
    c_decoded = next(e.seq for e in events if e.kind == "call_decoded" and e.payload["call_id"] == "c")
    a_injected = next(e.seq for e in events if e.kind == "interrupt_injected" and "a" in e.payload["calls"])
    assert a_injected < c_decoded
    finish = events[-1]
    assert finish.kind == "finish" and finish.payload["status"] == "finished"
    assert finish.payload["text"].endswith("All three are done.")


def test_sync_and_sync_parallel_follow_the_same_plan():
    sync = run("sync")
    assert order(sync, "call_decoded") == ["b", "a", "c"] and sync[-1].payload["status"] == "finished"
    parallel = run("sync_parallel")
    assert order(parallel, "call_decoded") == ["b", "a", "c"]
    assert [e.payload["calls"] for e in parallel if e.kind == "interrupt_injected"][0] in (["b", "a"], ["a", "b"])
    assert "[TRAP][END]" in parallel[-1].payload["text"]


def test_sync_parallel_can_yield_by_ending_its_turn_instead_of_a_trap():
    events = run("sync_parallel", {**PLAN, "wait": "eos"})
    assert [e.payload["calls"] for e in events if e.kind == "interrupt_injected"][0] in (["b", "a"], ["a", "b"])
    finish = events[-1]
    assert finish.payload["status"] == "finished" and "[TRAP]" not in finish.payload["text"]
    assert finish.payload["text"].endswith("All three are done.")


def test_it_spends_wall_clock_time_per_token():
    plan = {**PLAN, "calls": PLAN["calls"][:1], "token_ms": 5}
    events = run("async", plan)
    tokens = [e for e in events if e.kind == "token"]
    elapsed = tokens[-1].t_ms - tokens[0].t_ms
    assert elapsed >= 5 * (len(tokens) - 1) * 0.9


def test_a_prompt_without_a_plan_fails_the_task_with_the_reason():
    backend = SimulatedBackend(get_model("simulated"))
    scheduler = Scheduler(lambda name: backend)
    events = scheduler.submit(TaskSubmission(1, "simulated", "no plan here", 10, time.time(), budgets=Budgets()))
    for _ in range(10):
        events += scheduler.step()
    assert events[-1].payload["status"] == "failed" and "[plan]" in events[-1].payload["reason"]


def test_a_sub_agent_follows_the_plan_its_task_names_among_its_instructions_plans():
    other = {**PLAN, "calls": PLAN["calls"][:1], "final": "Only a."}
    plans = json.dumps({"q1": other, "q12": PLAN})
    events = run("async", prompt=f"You answer one sub-question.\n[plans] {plans}\n\nplan:q12 Find b.")
    assert order(events, "call_decoded") == ["b", "a", "c"]
    assert events[-1].payload["text"].endswith("All three are done.")
    events = run("async", prompt=f"You answer.\n[plans] {plans}\n\nplan:q1 Find a.")
    assert order(events, "call_decoded") == ["a"] and events[-1].payload["text"].endswith("Only a.")
    events = run("async", prompt=f"You answer.\n[plans] {plans}\n\nplan:q7 Unknown.")
    assert events[-1].payload["status"] == "failed" and "plan:KEY" in events[-1].payload["reason"]


def test_a_plan_asking_for_a_slow_decoder_is_refused_with_the_reason():
    for charges, why in [({"token_ms": 3000}, "token_ms must be a number from 0 to 200"),
                         ({"inject_ms": 1e6}, "inject_ms must be a number from 0 to 50"),
                         ({"token_ms": "10"}, "token_ms must be a number")]:
        events = run("async", {**PLAN, **charges})
        assert events[-1].kind == "finish" and events[-1].payload["status"] == "failed"
        assert why in events[-1].payload["reason"]


def submission(task_id: int, plan: dict, max_wall_s: float = 300.0) -> TaskSubmission:
    return TaskSubmission(task_id, "simulated", f"q\n[plan] {json.dumps(plan)}", 400, time.time(), mode="async",
                          tools=[F.to_dict()], budgets=Budgets(max_wall_s=max_wall_s))


def test_it_never_holds_the_loop_for_a_slow_plan_and_other_tasks_decode_meanwhile():
    """A plan at 200 ms per token (the cap) no longer sleeps in the loop: each step returns at
    once, and a fast task finishes while the slow one has written only a few tokens."""
    backend = SimulatedBackend(get_model("simulated"))
    scheduler = Scheduler(lambda name: backend)
    slow = {**PLAN, "calls": PLAN["calls"][:1], "token_ms": 200}
    fast = {**PLAN, "calls": PLAN["calls"][:1], "token_ms": 1}
    events = scheduler.submit(submission(1, slow)) + scheduler.submit(submission(2, fast))
    longest = 0.0
    while scheduler.task(2) is not None:
        start = time.monotonic()
        events += scheduler.step()
        longest = max(longest, time.monotonic() - start)
        for request in scheduler.take_dispatches():
            events += scheduler.deliver(request.task_id, request.call_id, ok=True, value=0)
        wait_while_busy(scheduler)
    slow_tokens = [e for e in events if e.kind == "token" and e.task_id == 1]
    fast_finish = next(e for e in events if e.kind == "finish" and e.task_id == 2)
    assert fast_finish.payload["status"] == "finished"
    assert len(slow_tokens) <= fast_finish.t_ms / 200 + 2  # one token per 200 ms, not one per step
    assert longest < 0.1


def test_it_enforces_the_wall_budget_of_a_slow_plan_within_a_step():
    backend = SimulatedBackend(get_model("simulated"))
    scheduler = Scheduler(lambda name: backend)
    events = scheduler.submit(submission(1, {**PLAN, "token_ms": 200}, max_wall_s=0.5))
    start = time.monotonic()
    while scheduler.task(1) is not None:
        events += scheduler.expire() + scheduler.step()
        wait_while_busy(scheduler)
    assert events[-1].payload["finish_reason"] == "time_limit"
    assert time.monotonic() - start < 0.5 + 0.25


def test_it_starts_a_sampled_tokens_work_at_once_so_the_engines_bookkeeping_overlaps_it():
    """As a device computes beside its host: the step that samples a token also charges its cost,
    so the engine's publishing and dispatching after that step run while the token is 'decoded'."""
    backend = SimulatedBackend(get_model("simulated"))
    scheduler = Scheduler(lambda name: backend)
    scheduler.submit(submission(1, {**PLAN, "calls": PLAN["calls"][:1], "token_ms": 50}))
    events: list = []
    while not any(e.kind == "token" for e in events):
        events += scheduler.step()
        wait_while_busy(scheduler)
    run = scheduler.task(1)
    assert run is not None and run.unevaluated == []
    assert run.seq.n_tokens == len(run.prompt_ids) + len(run.generated)  # the token is in the context
    assert 0.03 < run.seq.busy_s() <= 0.05  # and its 50 ms are running already
    assert scheduler.step() == [] and not scheduler.worked  # nothing to do until they are over


def test_a_tokens_work_starts_before_the_engine_parses_it(monkeypatch):
    """The CML monitor, the call table and the events see a token whose work is running already."""
    import engine.drivers.local as local

    seen: list[tuple[int, float]] = []
    on_token = local.on_token

    def watching(table, run, token, piece):
        seen.append((run.seq.n_tokens - len(run.prompt_ids) - len(run.generated), run.seq.busy_s()))
        return on_token(table, run, token, piece)

    monkeypatch.setattr(local, "on_token", watching)
    backend = SimulatedBackend(get_model("simulated"))
    scheduler = Scheduler(lambda name: backend)
    scheduler.submit(submission(1, {**PLAN, "calls": PLAN["calls"][:1], "token_ms": 30}))
    while len(seen) < 3:
        scheduler.step()
        wait_while_busy(scheduler)
    assert all(appended == 1 and busy > 0.02 for appended, busy in seen)


def test_its_logits_name_the_planned_token_even_after_the_engine_masked_them_in_place():
    backend = SimulatedBackend(get_model("simulated"))
    seq = backend.open_sequence()
    seq.append(backend.tokenize(f"question\n[plan] {json.dumps(PLAN)}\n"))
    expected = backend.tokenize("[CALL] b [HEAD] f(x=2) [END] ")  # LPT: b (300 ms) first
    got = []
    for _ in expected:
        logits = seq.logits()
        got.append(int(np.argmax(logits)))
        logits[:] = -np.inf  # a mask may lower every entry of the buffer it was given
        seq.append([got[-1]])
    assert got == expected
