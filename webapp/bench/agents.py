"""`bench --agents`: an orchestrator delegates k independent sub-questions to a sub-agent tool.

Each sub-agent answers its sub-question with `CALLS_PER_CHILD` calls of a simulated `lookup`
tool whose latencies are drawn from the run's latency profile (fixed per call by its arguments,
so every mode faces the same latencies). The parent's call of `ask_agent` starts a child task
through the normal intake; the child's answer is the call's result.

Simulated decoder: the parent follows a `[plan]` whose calls are `ask_agent(task='plan:qN ...')`;
the agent tool's instruction carries every child's plan under its key (`[plans]`), so the parent's
call is as short as a real one. Embedded model: the parent gets a cheat sheet of its k calls and
the agent's instruction a cheat sheet of each sub-question's lookups, so the model's accuracy
does not decide the latency.

The bound is the paper's formula (webapp/bench/bounds.py) with a child's whole run as its call's
E: with the simulated decoder, E is the child's own bound in its mode plus its first token (an
ideal system), and `bound_run_ms` also gives the bound with E the child's measured run (its start
to its last token), which leaves out only the parent's own overheads; with the embedded model E
is the measured run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

import redis

from engine.intake import Intake
from engine.messages import Budgets, Sampling, TaskSubmission
from engine.timeline import EventKind, Timeline
from webapp.bench import embedded, plan
from webapp.bench.runner import BenchError, Services, Setup, bench_user
from webapp.bench.scenarios import PlannedCall, Scenario, draw_latencies
from webapp.runs.models import Task, TraceEvent

AGENTS = "agents"
AGENT_TOOL = "ask_agent"
LOOKUP = "lookup"
PACK = "bench-agents"
CALLS_PER_CHILD = 2
KS = (2, 3, 4, 5)
CHILD_WALL_S = 120.0
EMBEDDED_CHILD_TOKENS = 96

LOOKUP_SPEC = {
    "name": LOOKUP, "description": "Look up one fact by its query.", "kind": "simulated",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "est_latency_ms": 110, "timeout_s": 10.0,
}
AGENT_PARAMETERS = {"type": "object", "properties": {"task": {"type": "string", "description": "the sub-question"}},
                    "required": ["task"]}


@dataclass(frozen=True)
class AgentScenario:
    id: str
    k: int
    children: list[Scenario]  # each sub-agent's own calls (lookups with drawn latencies)

    def task_text(self, i: int) -> str:
        return f"plan:q{i + 1} Find both facts of sub-question {i + 1}."

    @property
    def question(self) -> str:
        return (f"Answer {self.k} independent sub-questions. Delegate each one to {AGENT_TOOL}, "
                "then sum up what the sub-agents found.")


def agent_scenarios(seed: int, ks: tuple[int, ...] = KS, limit: int = 3, profile: str = "paper") -> list[AgentScenario]:
    out = []
    for k in ks:
        for n in range(limit):
            sid = f"agents_k{k}_{n}"
            children = []
            for i in range(k):
                cid = f"{sid}_q{i + 1}"
                drawn = draw_latencies(seed, cid, CALLS_PER_CHILD, profile)
                calls = [PlannedCall(j, LOOKUP, {"query": f"{cid}_{j + 1}"}, drawn[j]) for j in range(CALLS_PER_CHILD)]
                children.append(Scenario(cid, AGENTS, f"Sub-question {i + 1}", [LOOKUP_SPEC], calls, profile=profile))
            out.append(AgentScenario(sid, k, children))
    return out


def ensure_pack(work: list[AgentScenario]) -> None:
    """The sub-agents' tool pack: one `lookup` whose latency is fixed per query for every scenario."""
    from webapp.tools.models import Tool, ToolPack

    pack, _ = ToolPack.objects.update_or_create(name=PACK, defaults={
        "description": "The sub-agents' tools of `manage.py bench --agents` (rewritten by each run)."})
    by_args = {embedded.args_key(c.args): c.latency_ms for s in work for child in s.children for c in child.calls}
    Tool.objects.update_or_create(pack=pack, name=LOOKUP, defaults={
        "description": LOOKUP_SPEC["description"], "kind": "simulated", "parameters": LOOKUP_SPEC["parameters"],
        "est_latency_ms": 110, "timeout_s": 10.0,
        "config": {"latency_by_args": by_args, "returns": {"fact": "int:1:1000"}}})


def child_bound_ms(child: Scenario, mode: str, setup: Setup, injected: dict[str, str] | None = None) -> float:
    """The child's whole run in an ideal system: its bound (first token to last) plus its first token."""
    return plan.bound(child, mode, setup.token_ms, setup.inject_ms, injected) + setup.token_ms


def parent_scenario(s: AgentScenario, latencies: list[float]) -> Scenario:
    """The parent as a scenario of k independent calls, each as slow as its child's run."""
    calls = [PlannedCall(i, AGENT_TOOL, {"task": s.task_text(i)}, latencies[i]) for i in range(s.k)]
    return Scenario(s.id, AGENTS, s.question, [], calls)


def child_instruction(s: AgentScenario, mode: str, setup: Setup) -> str:
    if setup.decoder == "simulated":
        plans = {f"q{i + 1}": plan.plan(child, mode, setup.token_ms, setup.inject_ms)
                 for i, child in enumerate(s.children)}
        return f"You answer one sub-question.\n[plans] {json.dumps(plans)}\n"
    sheet = "\n".join(f"For plan:q{i + 1}: " + "; ".join(plan.call_text(c.name, c.args) for c in child.calls)
                      for i, child in enumerate(s.children))
    return ("You answer one sub-question with the lookup tool. Cheat sheet: make exactly the calls listed for "
            f"your sub-question, then answer in one sentence.\n{sheet}")


def agent_tool(s: AgentScenario, mode: str, setup: Setup) -> dict[str, Any]:
    from webapp.runs.agents import AGENT_GRACE_S

    config = {"model": setup.model, "mode": mode, "pack": PACK, "instruction": child_instruction(s, mode, setup),
              "max_wall_s": CHILD_WALL_S,
              "max_tokens": 2000 if setup.decoder == "simulated" else EMBEDDED_CHILD_TOKENS}
    return {"name": AGENT_TOOL, "description": "Delegate one sub-question to a sub-agent; returns its answer.",
            "kind": "agent", "parameters": AGENT_PARAMETERS, "est_latency_ms": 1000,
            "timeout_s": CHILD_WALL_S + AGENT_GRACE_S, "config": config}


def parent_prompt(s: AgentScenario, mode: str, setup: Setup) -> str:
    expected = [child_bound_ms(child, mode, setup) for child in s.children]
    scenario = parent_scenario(s, expected)
    if setup.decoder == "simulated":
        return plan.prompt(scenario, mode, setup.token_ms, setup.inject_ms)
    return embedded.prompt(scenario, cheat_sheet=True)


def run_agent_scenario(services: Services, s: AgentScenario, mode: str, setup: Setup,
                       timeout_s: float = 300.0) -> dict[str, Any]:
    tools = [agent_tool(s, mode, setup)]
    task = Task.objects.create(owner=bench_user(), prompt=parent_prompt(s, mode, setup), model=setup.model,
                               max_tokens=setup.max_tokens, seed=setup.seed, mode=mode, tools=tools,
                               max_calls=s.k + 8, max_wall_s=timeout_s)
    client = redis.Redis.from_url(services.redis_url)
    Intake(client).submit(TaskSubmission(task.pk, setup.model, task.prompt, task.max_tokens, time.time(),
                                         Sampling(seed=setup.seed), mode=mode, tools=tools,
                                         budgets=Budgets(max_calls=task.max_calls, max_wall_s=timeout_s)))
    deadline = time.monotonic() + timeout_s + 30
    while not Task.objects.filter(pk=task.pk, status__in=Task.FINAL).exists():
        if services.dead():
            raise BenchError(services.dead())
        if time.monotonic() > deadline:
            raise BenchError(f"task {task.pk} ({s.id}, {mode}) did not end within {timeout_s + 30:g} s")
        time.sleep(0.05)
    # A child ends before its parent can answer, but its own end is stored a moment later.
    wait_until = time.monotonic() + 10
    while task.children.exclude(status__in=Task.FINAL).exists() and time.monotonic() < wait_until:
        time.sleep(0.05)
    task.refresh_from_db()
    return measure_agents(task, s, mode, setup)


def _events(task: Task) -> list[TraceEvent]:
    return list(TraceEvent.objects.filter(task=task).order_by("seq"))


def _injected(events: list[TraceEvent]) -> dict[str, str]:
    return {e.payload["call_id"]: e.payload["injected"] for e in events if e.kind == EventKind.CALL_RESULT}


def _latency(tokens: list[float]) -> float | None:
    return round(tokens[-1] - tokens[0], 3) if len(tokens) > 1 else None


def measure_agents(task: Task, s: AgentScenario, mode: str, setup: Setup) -> dict[str, Any]:
    events = _events(task)
    timeline = Timeline.of(events)
    errors = [f"{e.payload['call_id']}: {e.payload['error']}" for e in events
              if e.kind == EventKind.CALL_RESULT and not e.payload["ok"]]
    errors += [f"{e.payload['call_id']}: {e.payload['error']}" for e in events if e.kind == "call_error"]
    if task.status != Task.Status.FINISHED:
        errors.append(f"task {task.status}: {task.status_reason}")
    dispatched = {c.call_id: c.dispatched_ms for c in timeline.calls.values()}
    by_call = {c.parent_call_id: c for c in task.children.all()}
    children, ideal, ran = [], [], []
    for i, child_scenario in enumerate(s.children):
        child = by_call.get(plan.call_id(i))
        child_events = _events(child) if child else []
        child_timeline = Timeline.of(child_events)
        run_ms = child_timeline.tokens[-1] if child_timeline.tokens else None  # from the child's start
        start_delay = None
        if child and child.started_at and task.started_at and dispatched.get(plan.call_id(i)) is not None:
            start_delay = round((child.started_at - task.started_at).total_seconds() * 1000
                                - dispatched[plan.call_id(i)], 1)
        if child is None or child.status != Task.Status.FINISHED:
            errors.append(f"{plan.call_id(i)}: sub-agent {child.pk if child else '(none)'} "
                          f"{child.status if child else 'never started'}")
        ideal.append(child_bound_ms(child_scenario, mode, setup, _injected(child_events)))
        ran.append(run_ms or 0.0)
        children.append({"call_id": plan.call_id(i), "task_id": child.pk if child else None,
                         "engine": child.engine_id if child else None,
                         "latency_ms": _latency(child_timeline.tokens), "run_ms": run_ms,
                         "ideal_run_ms": round(ideal[-1], 3), "start_delay_ms": start_delay,
                         "calls": len(child_timeline.calls)})
    latency = _latency(timeline.tokens)
    injected = _injected(events)
    if setup.decoder == "simulated":
        bound = plan.bound(parent_scenario(s, ideal), mode, setup.token_ms, setup.inject_ms, injected)
        bound_run = plan.bound(parent_scenario(s, ran), mode, setup.token_ms, setup.inject_ms, injected)
    else:
        bound, _, _ = embedded.bound(parent_scenario(s, ran), mode, events)
        bound_run = bound
    return {
        "scenario": s.id, "dataset": AGENTS, "k": s.k, "decoder": setup.decoder, "label": setup.label,
        "model": setup.model, "profile": setup.profile, "mode": mode, "engines": None, "task_id": task.pk,
        "latency_ms": latency, "bound_ms": bound, "bound_run_ms": bound_run,
        "measured_over_bound": round(latency / bound, 4) if latency and bound else None,
        "measured_over_bound_run": round(latency / bound_run, 4) if latency and bound_run else None,
        "tokens": len(timeline.tokens), "injected_tokens": timeline.injected_tokens,
        "overlap_ms": timeline.overlap_ms(), "children": children, "errors": errors,
    }


def summarize_agents(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per (decoder setup, engines, k, mode); speedups against sync on the same scenarios."""
    def key(r: dict[str, Any]) -> tuple[str, int, int]:
        return r["label"], r["engines"], r["k"]

    sync = {(*key(r), r["scenario"]): r for r in rows if r["mode"] == "sync" and r["latency_ms"] and not r["errors"]}
    groups: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((*key(r), r["mode"]), []).append(r)
    results = []
    for (label, engines, k, mode), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2],
                                                                                  MODE_ORDER.index(g[0][3]))):
        ok = [r for r in group if r["latency_ms"] and not r["errors"]]
        speedups = [sync[(label, engines, k, r["scenario"])]["latency_ms"] / r["latency_ms"] for r in ok
                    if (label, engines, k, r["scenario"]) in sync]
        results.append({
            "label": label, "engines": engines, "k": k, "mode": mode, "runs": len(group),
            "failed": len(group) - len(ok),
            "latency_ms": _mean([r["latency_ms"] for r in ok]), "bound_ms": _mean([r["bound_ms"] for r in ok]),
            "measured_over_bound": _mean([r["measured_over_bound"] for r in ok], 3),
            "measured_over_bound_run": _mean([r["measured_over_bound_run"] for r in ok], 3),
            "speedup_vs_sync": _mean(speedups, 2),
            "child_start_delay_ms": _mean([c["start_delay_ms"] for r in ok for c in r["children"]
                                           if c["start_delay_ms"] is not None]),
        })
    return results


MODE_ORDER = ("sync", "sync_parallel", "async")


def _mean(values: list[float], digits: int = 1) -> float | None:
    return round(sum(values) / len(values), digits) if values else None


def markdown_agents(params: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = ["# Sub-agent benchmark (`manage.py bench --agents`)", "",
             f"{params['date']}, commit {params['git_commit']}, machine {params['machine']}; "
             f"{CALLS_PER_CHILD} lookups per sub-agent, latencies: {params['profile']} profile, seed {params['seed']}.",
             "Latency is the parent's first token to its last; the bound is the paper's formula with each "
             "sub-agent's whole run as its call's E (simulated decoder: the sub-agent's own bound, an ideal "
             "system; `/bound (runs)`: E = the sub-agent's measured run).", ""]
    for part in params["parts"]:
        lines.append(f"- {part['label']}: {part['engines']} engine process(es), k = {part['ks']}, "
                     f"{part['limit']} scenario(s) per k, {part['seconds']} s"
                     + (" (simulated decoder: every number below is simulated)" if part["decoder"] == "simulated"
                        else ""))
    lines += ["", "| decoder | engines | k | mode | runs | failed | latency (ms) | bound (ms) | measured/bound | "
                  "/bound (runs) | speedup vs sync | child start delay (ms) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['engines']} | {r['k']} | {r['mode']} | {r['runs']} | {r['failed']} | "
                     f"{_cell(r['latency_ms'])} | {_cell(r['bound_ms'])} | {_cell(r['measured_over_bound'])} | "
                     f"{_cell(r['measured_over_bound_run'])} | {_cell(r['speedup_vs_sync'], 'x')} | "
                     f"{_cell(r['child_start_delay_ms'])} |")
    return "\n".join(lines) + "\n"


def _cell(value: Any, unit: str = "") -> str:
    return "–" if value is None else f"{value}{unit}"


def with_engines(row: dict[str, Any], engines: int) -> dict[str, Any]:
    return {**row, "engines": engines}


def setup_for_agents(setup: Setup) -> Setup:
    """The parent writes k short calls and a short answer: a real model needs few tokens."""
    return setup if setup.decoder == "simulated" else replace(setup, max_tokens=min(setup.max_tokens, 200))
