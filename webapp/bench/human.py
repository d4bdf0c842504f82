"""The `human_message` scenario set: does the model take up a person's message mid-task?

Each scenario is a demo-pack question (weather, stock prices, flights: finetune/plans.py's
`demo_plan(k, seed, heldout=True, message=True)`, with cities and ticker symbols that no training
trace contains) answered with the demo pack's simulated tools (their `returns` rules), plus a
message from a person ("Also check Oslo.") that asks for one more call. The runner sends the
message through the engine's human-message path (the control message `send_message` uses) once
the task's first call is dispatched, or after its first `MESSAGE_AFTER_TOKENS` tokens when it
writes no call by then. The run succeeds when the extra call (same function, same arguments) was
executed. Tool latencies come from the run's latency profile like every other scenario's; the
extra call is the scenario's last ground-truth call, so it gets a drawn latency too.
"""

from __future__ import annotations

from typing import Any

from finetune.plans import demo_plan
from webapp.bench.scenarios import DEFAULT_PROFILE, HUMAN_MESSAGE, PlannedCall, Scenario, draw_latencies

DEFAULT_COUNT = 20
MESSAGE_AFTER_TOKENS = 32  # a model that writes no call gets the message after this many tokens


def human_scenario(k: int, seed: int, profile: str = DEFAULT_PROFILE) -> Scenario:
    plan = demo_plan(k, seed, heldout=True, message=True)
    assert plan.message is not None and plan.message.calls
    wanted = [*plan.calls, *plan.message.calls]
    sid = f"{HUMAN_MESSAGE}_{k}"
    latencies = draw_latencies(seed, sid, len(wanted), profile)
    calls = [PlannedCall(i, c.name, dict(c.args), ms) for i, (c, ms) in enumerate(zip(wanted, latencies, strict=True))]
    return Scenario(sid, HUMAN_MESSAGE, plan.question, [t.to_dict() for t in plan.tools], calls, [plan.source],
                    profile=profile, message=plan.message.text,
                    message_calls=tuple(range(len(plan.calls), len(wanted))))


def human_scenarios(seed: int, limit: int | None = None, profile: str = DEFAULT_PROFILE) -> list[Scenario]:
    return [human_scenario(k, seed, profile) for k in range(DEFAULT_COUNT if limit is None else limit)]


def scenario_index(scenario_id: str) -> int:
    return int(scenario_id.removeprefix(f"{HUMAN_MESSAGE}_"))


def message_outcome(scenario: Scenario, events: list[Any], executed: list[tuple[str, dict[str, Any]]]) -> dict:
    """What became of the person's message in one run, read from its trace: whether the engine
    took it (a task that had already ended ignores it), when it was injected, and whether the
    extra call it asks for was executed."""
    tokens = [e.t_ms for e in events if e.kind == "token"]
    first = tokens[0] if tokens else 0.0
    at = next((i for i, e in enumerate(events) if e.kind == "human_message"), None)
    queued = events[at] if at is not None else None
    injected = next((e for e in events if e.kind == "interrupt_injected" and e.payload.get("messages")), None)
    wanted = [scenario.calls[i] for i in scenario.message_calls]
    made = all(any(name == c.name and args == c.args for name, args in executed) for c in wanted)
    return {
        "text": scenario.message,
        "calls": [{"name": c.name, "args": c.args} for c in wanted],
        "delivered": queued is not None,
        "sent_ms": round(queued.t_ms - first, 3) if queued else None,
        "injected_ms": round(injected.t_ms - first, 3) if injected else None,
        "tokens_before": sum(1 for e in events[:at] if e.kind == "token") if at is not None else None,
        "extra_call_made": bool(wanted) and made,
    }
