"""The engine core with a server that samples (like SGLang), driven by a scripted remote backend:
interrupts by abort and resubmit, the tokens after an abort, no request held open while a task
waits, the [INTR] ban by dropping and banning tokens, cache metrics, server failures."""

import json

from engine.drivers.remote import _params as remote_params
from engine.messages import Budgets, TaskSubmission
from engine.scheduler import Scheduler
from engine.state import Status
from tests.helpers import Clock
from tests.scripted import FALLBACK, ScriptedRemoteBackend
from tests.unit.test_scheduler_calls import F, G, kinds


def make(pieces, mode="async", after_abort=1, fail_at=None, max_tokens=200):
    backend = ScriptedRemoteBackend([p.encode() for p in pieces], after_abort=after_abort, fail_at=fail_at)
    scheduler = Scheduler(lambda name: backend, clock=Clock(), wall=lambda: 1000.0)
    sub = TaskSubmission(1, "scripted", "go", max_tokens, 1000.0, mode=mode, tools=[F.to_dict(), G.to_dict()],
                         budgets=Budgets())
    return scheduler, scheduler.submit(sub), backend


def steps(scheduler, n=200):
    events = []
    for _ in range(n):
        if not scheduler.has_work():
            break
        events += scheduler.step()
    return events


def text_of(events):
    return "".join(e.payload["text"] for e in events if e.kind == "token")


def test_async_keeps_streaming_then_injects_by_abort_and_resubmit():
    scheduler, events, backend = make(["[CALL] a [HEAD] f(a=1) [END]", " one", " two", " three", " four", " five"])
    events += steps(scheduler, 4)
    (request,) = scheduler.take_dispatches()
    assert request.call_id == "a" and backend.sequences[0].streaming
    events += scheduler.deliver(1, "a", ok=True, value=2) + steps(scheduler)
    injected = next(e for e in events if e.kind == "interrupt_injected")
    prompt, interrupt = backend.requests[0], backend.requests[1]
    assert interrupt["reason"] == "interrupt"
    assert interrupt["input_ids"][:len(prompt["input_ids"])] == prompt["input_ids"]
    # The token the server let through after the abort counts: it is in the context before the frame.
    position = injected.payload["position"]
    frame = backend.tokenize(injected.payload["text"])
    assert interrupt["input_ids"][position:] == frame
    before = text_of([e for e in events if e.seq < injected.seq])
    # " three" was streamed before the abort went out, " four" slipped through after it.
    assert before.endswith(" three four") and "abort" not in kinds(events, "abort")
    assert events[-1].kind == "finish" and text_of(events).endswith(" five")
    resubmitted = next(e for e in events if e.kind == "resubmitted")
    assert resubmitted.payload["cached_tokens"] == resubmitted.payload["expected_cached"] - 1  # all but the last
    assert events[-1].payload["metrics"]["cache_hit_ratio"] > 0.9


def test_sync_drops_what_the_server_wrote_after_the_call_and_holds_no_request_open():
    scheduler, events, backend = make(["[CALL] a [HEAD] f(a=1) [END]", " leaked", " more", " answer"], mode="sync",
                                      after_abort=2)
    events += steps(scheduler, 3)
    assert scheduler.task(1).status is Status.BLOCKED
    events += steps(scheduler, 10)
    seq = backend.sequences[0]
    assert not seq.streaming and scheduler.task(1).status is Status.BLOCKED
    assert " leaked" not in text_of(events)
    events += scheduler.deliver(1, "a", ok=True, value=2) + steps(scheduler)
    resumed = backend.requests[1]["input_ids"]
    assert all(t not in resumed for t in (2, 3))  # the leaked tokens never reached the context
    assert events[-1].kind == "finish"


def test_a_trap_parks_without_a_request_open():
    scheduler, events, backend = make(["[CALL] a [HEAD] f(a=1) [END]", " [TRAP][END]", " later", " answer"])
    events += steps(scheduler, 20)
    assert scheduler.task(1).status is Status.PARKED and not backend.sequences[0].streaming
    assert len(backend.requests) == 1
    events += scheduler.deliver(1, "a", ok=True, value=2) + steps(scheduler)
    assert backend.requests[1]["reason"] == "interrupt" and events[-1].kind == "finish"


def test_tokens_after_an_abort_that_open_a_block_delay_the_injection_until_it_closes():
    # After the result arrives " w" is read, the abort goes out, and " [CALL] b [HEAD]" slips through.
    pieces = ["[CALL] a [HEAD] f(a=1) [END]", " x", " w", " [CALL] b [HEAD]", " g(x=2)", " [END]", " y", " z"]
    scheduler, events, backend = make(pieces, after_abort=1)
    events += steps(scheduler, 3)  # a dispatched, " x" decoded
    events += scheduler.deliver(1, "a", ok=True, value=2) + steps(scheduler)
    reasons = [r["reason"] for r in backend.requests]
    assert reasons[:3] == ["prompt", "continue", "interrupt"]  # the block opened by the extra token closed first
    # The "continue" request starts inside that block: its grammar begins where the block stands.
    tag = json.loads(backend.requests[1]["params"]["structural_tag"])
    assert tag["format"]["elements"][0]["grammar"].splitlines()[1] == 'root ::= " " name "(" args? ")" " "'
    injected = next(e for e in events if e.kind == "interrupt_injected")
    assert "[END]" in text_of([e for e in events if e.seq < injected.seq])


def test_an_intr_spelling_is_dropped_and_banned_and_decoding_goes_on():
    scheduler, events, backend = make(["[CALL] a [HEAD] f(a=1) [END]", " [", "INTR", " a [HEAD] 5 [END]", " done"])
    events += steps(scheduler)
    (banned,) = [e for e in events if e.kind == "banned_token"]
    assert banned.payload["text"] == "INTR"
    assert "[INTR" not in text_of(events).replace("[INTR] a [HEAD]", "")
    assert any(r["params"].get("logit_bias") == {str(banned.payload["id"]): -100.0} for r in backend.requests)
    # The server, told not to, said something else there: "[" then the fallback, never "[INTR".
    assert FALLBACK in backend.sequences[0].context and " [fallback" in text_of(events)


def test_a_server_failure_fails_the_task_with_the_reason():
    scheduler, events, backend = make(["one", " two", " three"], fail_at=0)
    events += steps(scheduler)
    assert events[-1].kind == "finish" and events[-1].payload["status"] == "failed"
    assert "connection reset" in events[-1].payload["reason"]


def test_the_server_streams_only_the_budget():
    scheduler, events, backend = make(["one", " two", " three", " four"], max_tokens=2)
    events += steps(scheduler)
    assert backend.requests[0]["params"]["max_new_tokens"] == 2
    assert events[-1].payload["finish_reason"] == "length" and kinds(events, "token") == ["token", "token"]


def test_every_request_asks_for_the_call_grammar():
    import json

    scheduler, events, backend = make(["hi"])
    steps(scheduler)
    tag = json.loads(backend.requests[0]["params"]["structural_tag"])
    assert tag["format"]["triggers"] == ["[CALL]"] and '"f" | "g"' in tag["format"]["tags"][0]["content"]["grammar"]


def test_a_trap_with_nothing_pending_is_dropped_and_banned_only_while_nothing_is_pending():
    pieces = [" [TRAP][END]", " [CALL] a [HEAD] f(a=1) [END]", " [TRAP][END]", " done"]
    scheduler, events, backend = make(pieces)
    events += steps(scheduler, 30)
    (banned,) = [e for e in events if e.kind == "banned_token"]
    assert banned.payload == {"id": 1, "text": " [TRAP][END]", "why": "trap"}
    assert backend.requests[1]["reason"] == "continue"
    assert backend.requests[1]["params"]["logit_bias"] == {"1": -100.0}
    # With a call pending the ban is off: the trap parks the task, and a request made now would
    # not carry the ban.
    run = scheduler.task(1)
    assert run.status is Status.PARKED and [e for e in events if e.kind == "trap"]
    assert "logit_bias" not in remote_params(run)
    events += scheduler.deliver(1, "a", ok=True, value=2) + steps(scheduler)
    assert backend.requests[-1]["reason"] == "interrupt"
    # Its result in, nothing is pending again: the request that carries it bans the trap again.
    assert backend.requests[-1]["params"]["logit_bias"] == {"1": -100.0}
    assert events[-1].kind == "finish" and text_of(events).endswith(" done")


def test_the_prompts_cached_tokens_are_the_reused_prompt_tokens():
    scheduler, events, backend = make(["one", " two"])
    events += steps(scheduler)
    scheduler2, events2, _ = make(["one", " two"])
    backend2 = scheduler2.task(1).backend
    backend2.cache = [list(backend.requests[0]["input_ids"])]  # a server that saw this prompt before
    events2 += steps(scheduler2)
    assert events[-1].payload["metrics"]["reused_prompt_tokens"] == 0
    reused = events2[-1].payload["metrics"]["reused_prompt_tokens"]
    assert reused == len(backend.requests[0]["input_ids"]) and reused > 0


def test_it_refuses_a_scripted_task_on_a_server():
    backend = ScriptedRemoteBackend([b"unused"])
    scheduler = Scheduler(lambda name: backend, clock=Clock(), wall=lambda: 1000.0)
    events = scheduler.submit(TaskSubmission(1, "scripted", "go", 20, 1000.0, tools=[F.to_dict()],
                                             forced_text="[CALL] a [HEAD] f(a=1) [END]"))
    assert events[-1].kind == "finish" and events[-1].payload["status"] == "failed"
    assert "scripted task needs a local model" in events[-1].payload["reason"]
    assert not scheduler.has_work() and not backend.requests
