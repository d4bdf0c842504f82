"""Running benchmark scenarios through the real service: an engine process, Celery workers and
Redis (started here unless told to use running ones), tasks in the database, latency read from
the stored trace (first generated token -> last)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from django.contrib.auth import get_user_model

from engine import health
from engine.cml import END
from engine.intake import Intake
from engine.keys import inbox_stream, trace_stream
from engine.messages import Budgets, Control, Sampling, TaskSubmission
from engine.timeline import EventKind, Timeline
from webapp.bench import checker, embedded, plan
from webapp.bench.scenarios import DEFAULT_PROFILE, HUMAN_MESSAGE, Scenario, latency_profile
from webapp.core.processes import (
    PrivateRedis,
    Proc,
    ProcessError,
    redis_url,
    service_env,
    start_engine,
    start_worker,
)
from webapp.core.redis_dbs import BENCH_DB
from webapp.runs.models import Task, TraceEvent

BENCH_REDIS_DB = BENCH_DB  # its own database: a running service's engines never take bench tasks


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Setup:
    """How scenarios are run: which decoder and model, at what token charges (simulated), with or
    without the cheat sheet (embedded), with which tool-latency profile, on held-out entries or
    all, and the model's standalone decode rate (embedded, for the second bound)."""

    decoder: str  # "simulated" or "embedded"
    model: str
    seed: int = 0
    token_ms: float = 10.0  # simulated only
    inject_ms: float = 1.0  # simulated only
    cheat_sheet: bool = True  # embedded only
    max_tokens: int = 20000
    profile: str = DEFAULT_PROFILE  # tool latencies: "paper" or "web"
    heldout: bool = False  # scenarios only from the adaptation step's held-out BFCL entries
    standalone_ms_per_token: float | None = None  # embedded only: plain llama-cpp decode, no engine

    @property
    def label(self) -> str:
        """The decoder as tables show it."""
        if self.decoder == "simulated":
            return "simulated"
        return f"embedded {self.model}, {'with' if self.cheat_sheet else 'without'} cheat sheet"


@dataclass
class Services:
    """Redis, engines with the benchmark's model (one unless told) and a Celery worker, all for the
    benchmark."""

    log_dir: Path
    model: str = "simulated"
    engines: int = 1
    worker_concurrency: int = 12
    redis_db: int = BENCH_REDIS_DB
    extra_env: dict[str, str] = field(default_factory=dict)  # settings for the engines and the worker
    redis_url: str = ""
    engine_id: str = ""
    procs: list[Proc] = field(default_factory=list)
    redis: PrivateRedis | None = None

    def start(self, say: Callable[[str], None]) -> None:
        if self.redis_db == 0:
            raise BenchError("the benchmark empties its Redis database: it never uses database 0")
        self.redis_url = redis_url(self.redis_db)
        self.redis = PrivateRedis(self.redis_url, self.log_dir)
        try:
            self.redis.ensure()
        except ProcessError as exc:
            raise BenchError(str(exc)) from None
        if self.redis.started:
            say(f"no Redis answered at {self.redis.host}:{self.redis.port}: started a private one")
        client = redis.Redis.from_url(self.redis_url)
        # Another bench run on the same database would lose its intake and results to the flush.
        running = [b["id"] for kind in ("engine", "worker") for b in health.alive(client, kind)]
        if running:
            raise BenchError(f"another benchmark is running on Redis database {self.redis_db} ({', '.join(running)}): "
                             "wait for it to end, or pass --redis-db with a free database")
        client.flushdb()
        # Its own processes for its own user: sub-agents are tasks, and a run starts more of them
        # than a person may (the per-user rate and open-task cap would refuse the later ones).
        env = service_env(self.redis_url, ASYNCLM_TEST_REDIS_DB=str(self.redis_db), LOG_LEVEL="WARNING",
                          ASYNCLM_TASK_RATE="100000/m", ASYNCLM_MAX_OPEN_TASKS_PER_USER="1000", **self.extra_env)
        self.engine_id = f"bench-engine-{os.getpid()}"
        say(f"starting {self.engines} engine(s) and a Celery worker ({self.worker_concurrency} processes) on "
            f"{self.redis_url}")
        try:
            for n in range(self.engines):
                engine_id = self.engine_id if n == 0 else f"{self.engine_id}-{n + 1}"
                self.procs.append(start_engine(engine_id, self.model, env, self.log_dir, client, "--max-active", "8"))
            self.procs.append(start_worker(f"bench-worker-{os.getpid()}@localhost", env, self.log_dir, client,
                                           concurrency=self.worker_concurrency, loglevel="WARNING"))
        except ProcessError as exc:
            raise BenchError(str(exc)) from None

    def dead(self) -> str:
        for proc in self.procs:
            if not proc.alive:
                return f"{proc.name} exited ({proc.popen.returncode}); see its log, {proc.log_path}"
        return ""

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill(timeout=30)
        if self.redis is not None:
            self.redis.stop()


def bench_user():
    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_active": False})
    return user


def task_timeout_s(scenario: Scenario, base_s: float = 120.0) -> float:
    """The task's wall-time budget: room for every call at the profile's slowest latency."""
    return base_s + len(scenario.calls) * float(latency_profile(scenario.profile).get("max", 0)) / 1000


def run_scenario(services: Services, scenario: Scenario, mode: str, setup: Setup,
                 timeout_s: float | None = None) -> dict[str, Any]:
    """One (scenario, mode) through the engine; returns its scenarios.jsonl line. A scenario with
    a person's message gets it once the task's first call is dispatched (`send_message_when_due`)."""
    timeout_s = task_timeout_s(scenario) if timeout_s is None else timeout_s
    if scenario.message and setup.decoder != "embedded":
        raise BenchError(f"{scenario.id}: a person's message needs a real model (--decoder embedded)")
    if setup.decoder == "simulated":
        text, tools = plan.prompt(scenario, mode, setup.token_ms, setup.inject_ms), plan.tools(scenario)
    else:
        text, tools = embedded.prompt(scenario, setup.cheat_sheet), embedded.tools(scenario, setup.seed)
    task = Task.objects.create(owner=bench_user(), prompt=text, model=setup.model, max_tokens=setup.max_tokens,
                               seed=setup.seed, mode=mode, tools=tools, max_calls=len(scenario.calls) + 8,
                               max_wall_s=timeout_s)
    client = redis.Redis.from_url(services.redis_url)
    Intake(client).submit(TaskSubmission(task.pk, setup.model, task.prompt, task.max_tokens, time.time(),
                                         Sampling(seed=setup.seed), mode=mode, tools=tools,
                                         budgets=Budgets(max_calls=task.max_calls, max_wall_s=timeout_s)))
    deadline = time.monotonic() + timeout_s + 30
    if scenario.message:
        send_message_when_due(services, client, task.pk, scenario.message, deadline)
    while not Task.objects.filter(pk=task.pk, status__in=Task.FINAL).exists():
        if services.dead():
            raise BenchError(services.dead())
        if time.monotonic() > deadline:
            raise BenchError(f"task {task.pk} ({scenario.id}, {mode}) did not end within {timeout_s + 30:g} s")
        time.sleep(0.05)
    task.refresh_from_db()
    return measure(task, scenario, mode, setup)


def send_message_when_due(services: Services, client: redis.Redis, task_id: int, text: str, deadline: float,
                          after_tokens: int | None = None) -> str:
    """Follow the task's live trace (its Redis stream) and send the person's message, the way
    webapp.runs.submit.send_message does (a control message on the engine's result stream), as soon
    as the first call is dispatched, or after `after_tokens` tokens if no call came by then.
    Returns why it was sent, or "" when the task ended first (the trace then shows no message)."""
    from webapp.bench.human import MESSAGE_AFTER_TOKENS

    after_tokens = MESSAGE_AFTER_TOKENS if after_tokens is None else after_tokens
    key, last, tokens = trace_stream(task_id), "0-0", 0
    while time.monotonic() < deadline:
        if services.dead():
            raise BenchError(services.dead())
        for _, entries in client.xread({key: last}, count=500, block=50) or []:
            for entry_id, fields in entries:
                last = entry_id
                kind = json.loads(fields[b"e"])["kind"]
                tokens += kind == "token"
                if kind == "finish":
                    return ""
                why = "first call dispatched" if kind == "call_dispatched" else \
                    f"{after_tokens} tokens" if tokens >= after_tokens else ""
                if why:
                    client.xadd(inbox_stream(services.engine_id),
                                {"c": Control(task_id, "message", text=text).to_json()})
                    return why
        if Task.objects.filter(pk=task_id, status__in=Task.FINAL).exists():
            return ""
    return ""


def _calls(scenario: Scenario, setup: Setup, events: list[TraceEvent], started: dict[str, float],
           finished: dict[str, float], dispatch: dict[str, float]) -> list[dict[str, Any]]:
    """Each call with its drawn latency and when it ran: the plan's calls for the simulated decoder,
    the calls the model wrote (matched to the ground truth by arguments) for a real one."""
    if setup.decoder == "simulated":
        written = [(plan.call_id(c.index), c.name, c.latency_ms) for c in scenario.calls]
    else:
        drawn = embedded.drawn_latencies(scenario)
        written = [(e.payload["call_id"], e.payload["name"],
                    drawn.get((e.payload["name"], embedded.args_key(e.payload["args"]))))
                   for e in events if e.kind == "call_decoded"]
    return [{"call_id": cid, "name": name, "drawn_latency_ms": ms, "started_ms": started.get(cid),
             "finished_ms": finished.get(cid), "dispatch_ms": dispatch.get(cid)} for cid, name, ms in written]


def repeated_calls(events: list[TraceEvent]) -> int:
    """Calls the model wrote again (same function, same arguments) after the first one's result
    was already in its context: what a model does that has not learned to answer from results."""
    keys: dict[str, str] = {}
    answered: set[str] = set()
    repeats = 0
    for e in events:
        if e.kind == EventKind.CALL_DECODED:
            key = json.dumps([e.payload["name"], e.payload["args"]], sort_keys=True)
            repeats += key in answered
            keys[e.payload["call_id"]] = key
        elif e.kind == EventKind.INTERRUPT_INJECTED:
            answered |= {keys[c] for c in e.payload.get("calls", ()) if c in keys}
    return repeats


def cut_in_answer(events: list[TraceEvent], text: str) -> bool:
    """A run cut at the token limit while it wrote its answer: every call it made had its result in
    the context, and nothing after the last block opens another (a model that loops is cut inside
    a call, or with calls still out). Such a run asked for more tokens than the budget, nothing else."""
    finish = next((e.payload for e in reversed(events) if e.kind == EventKind.FINISH), {})
    if finish.get("finish_reason") != "length":
        return False
    decoded = {e.payload["call_id"] for e in events if e.kind == EventKind.CALL_DECODED}
    answered = {c for e in events if e.kind == EventKind.INTERRUPT_INJECTED for c in e.payload.get("calls", ())}
    tail = text[text.rfind(END) + len(END):] if END in text else text
    return bool(decoded) and decoded <= answered and "[" not in tail


# CML markers, and one the frame cut short: what is left of the model's text is words.
_MARKERS = re.compile(r"\[[A-Z]*\]?")


def answered_early(events: list[TraceEvent]) -> bool:
    """The model began its answer while a result was still out: after a call, it wrote words (not a
    call, not `[TRAP][END]`) and a frame of results went in after them. Its answer was then written
    without those results, and the late frame arrives mid-answer (where a model that waits for
    results had written `[TRAP][END]`)."""
    since_call, called = "", False
    for e in events:
        if e.kind == EventKind.CALL_DECODED:
            since_call, called = "", True
        elif e.kind == EventKind.TOKEN:
            since_call += e.payload["text"]
        elif e.kind == EventKind.INTERRUPT_INJECTED:
            if called and e.payload.get("calls") and re.search(r"\w", _MARKERS.sub("", since_call)):
                return True
            since_call = ""
    return False


def measure(task: Task, scenario: Scenario, mode: str, setup: Setup) -> dict[str, Any]:
    events = list(TraceEvent.objects.filter(task=task).order_by("seq"))
    timeline = Timeline.of(events)
    tokens = timeline.tokens
    injected = {e.payload["call_id"]: e.payload["injected"] for e in events if e.kind == EventKind.CALL_RESULT}
    started = {c.call_id: c.started_ms for c in timeline.calls.values() if c.started_ms is not None}
    finished = {c.call_id: c.finished_ms for c in timeline.calls.values() if c.finished_ms is not None}
    # The model's mistakes (a malformed block, an unknown function, bad arguments) are part of what
    # is measured; a failed tool, a lost call or a task that did not finish is a failure of the run.
    model_errors = [f"{e.payload['call_id']}: {e.payload['error']}" for e in events if e.kind == "call_error"]
    model_errors += [f"malformed: {e.payload['reason']}" for e in events if e.kind == "malformed"]
    errors = [f"{e.payload['call_id']}: {e.payload['error']}" for e in events
              if e.kind == "call_result" and not e.payload["ok"]]
    finish = next((e.payload for e in reversed(events) if e.kind == "finish"), {})
    if task.status != Task.Status.FINISHED:
        errors.append(f"task {task.status}: {task.status_reason}")
    latency = round(tokens[-1] - tokens[0], 3) if len(tokens) > 1 else None
    standalone = None
    if setup.decoder == "simulated":
        bound = plan.bound(scenario, mode, setup.token_ms, setup.inject_ms, injected)
        g_per_call = plan.g_ms_per_call(scenario, setup.token_ms)
    else:
        bound, _, g_per_call = embedded.bound(scenario, mode, events)
        if setup.standalone_ms_per_token:
            standalone, _, _ = embedded.bound(scenario, mode, events, per_token=setup.standalone_ms_per_token)
    # What the system adds: the decoding rate as measured (the simulated decoder's charge plus the
    # engine's own work per token) and the time from a call's [END] to its start on a worker.
    per_token = embedded.token_ms(events)
    dispatch = {c.call_id: round(c.started_ms - c.dispatched_ms, 3) for c in timeline.calls.values()
                if c.started_ms is not None and c.dispatched_ms is not None}
    executed = [(c.tool, c.arguments) for c in task.calls.exclude(started_ms=None).order_by("started_ms", "id")]
    if scenario.dataset == HUMAN_MESSAGE:
        verdict = checker.check_calls([(c.name, c.args) for c in scenario.calls], executed)
    else:
        verdict = checker.check(scenario.dataset, scenario.sources, executed)
    row = {
        "scenario": scenario.id, "dataset": scenario.dataset, "decoder": setup.decoder, "label": setup.label,
        "model": setup.model, "cheat_sheet": setup.cheat_sheet if setup.decoder == "embedded" else None,
        "profile": scenario.profile, "heldout": setup.heldout,
        "mode": mode, "task_id": task.pk, "latency_ms": latency, "bound_ms": bound,
        "bound_standalone_ms": standalone,
        "measured_over_bound_standalone": round(latency / standalone, 4) if latency and standalone else None,
        "token_ms": round(per_token, 3) if per_token else None,
        "dispatch_ms": round(sum(dispatch.values()) / len(dispatch), 2) if dispatch else None,
        "g_ms_per_call": g_per_call,
        "measured_over_bound": round(latency / bound, 4) if latency and bound else None,
        "tokens": len(tokens), "finish_reason": finish.get("finish_reason", ""),
        "repeated_calls": repeated_calls(events),
        "cut_in_answer": cut_in_answer(events, task.final_text),
        "answered_early": answered_early(events),
        "injected_tokens": timeline.injected_tokens,
        "overlap_ms": timeline.overlap_ms(),
        "calls": _calls(scenario, setup, events, started, finished, dispatch),
        "checker": verdict.to_dict(), "expected_calls": len(scenario.calls),
        "expected_functions": sorted(c.name for c in scenario.calls),
        "executed": [{"name": n, "args": a} for n, a in executed],
        "errors": errors, "model_errors": model_errors, "sources": scenario.sources,
    }
    if scenario.message:
        from webapp.bench.human import message_outcome

        row["message"] = message_outcome(scenario, events, executed)
    return row
