"""Several tasks through a real engine process (`make bench-engine`, the concurrency section's
second half): the same scripted tasks as the in-process half (webapp/bench/concurrency.py), now
submitted to the intake of an engine started as `make run` starts it, with its calls run by a real
Celery worker, once per embedded backend (`ASYNCLM_EMBEDDED_BATCHED` true and false). The figures
come from the stored traces: aggregate tokens/s (all tokens / the first token to the last, across
tasks), per-task tokens/s p50 and time to first token p50 (from submission)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from engine.intake import Intake
from engine.messages import Budgets, Sampling, TaskSubmission
from engine.tools import ToolSpec
from webapp.bench.concurrency import QUESTION, figures, scripted_text
from webapp.bench.runner import BenchError, Services, bench_user
from webapp.core.redis_dbs import BENCH_ENGINE_DB
from webapp.runs.models import Task, TraceEvent

BACKENDS = {"batched": "true", "contexts": "false"}
TASK_TIMEOUT_S = 600.0


def run_together(services: Services, model: str, n: int, tokens: int, tools: list[ToolSpec],
              calls: bool) -> dict[str, Any]:
    """N tasks submitted together; returns once every one has ended."""
    intake = Intake(redis.Redis.from_url(services.redis_url))
    specs = [t.to_dict() for t in tools]
    start = time.time()
    tasks = []
    for i in range(n):
        task = Task.objects.create(owner=bench_user(), prompt=QUESTION.format(i=i), model=model, max_tokens=tokens,
                                   mode="async", tools=specs, max_calls=50, max_wall_s=TASK_TIMEOUT_S)
        intake.submit(TaskSubmission(task.pk, model, task.prompt, tokens, time.time(), Sampling(), mode="async",
                                     tools=specs, budgets=Budgets(max_calls=50, max_wall_s=TASK_TIMEOUT_S),
                                     forced_text=scripted_text(calls, i)))
        tasks.append(task)
    deadline = time.monotonic() + TASK_TIMEOUT_S + 30
    while Task.objects.filter(pk__in=[t.pk for t in tasks]).exclude(status__in=Task.FINAL).exists():
        if services.dead():
            raise BenchError(services.dead())
        if time.monotonic() > deadline:
            raise BenchError(f"{n} tasks did not end within {TASK_TIMEOUT_S + 30:g} s")
        time.sleep(0.05)
    stamps: list[list[float]] = []
    dispatched = 0
    for task in Task.objects.filter(pk__in=[t.pk for t in tasks]).order_by("pk"):
        if task.status != "finished" or task.started_at is None:
            raise BenchError(f"task {task.pk} ended {task.status}: {task.status_reason}")
        base = task.started_at.timestamp()
        events = list(TraceEvent.objects.filter(task=task, kind__in=("token", "call_dispatched")).order_by("seq"))
        stamps.append([base + e.t_ms / 1000 for e in events if e.kind == "token"])
        dispatched += sum(e.kind == "call_dispatched" for e in events)
    return {"tasks": n, "calls": calls, "calls_dispatched": dispatched, **figures(stamps, start)}


def through_engine(model: str, tools: list[ToolSpec], log_dir: Path, say: Callable[[str], None], *,
                   tokens: int = 128, ns: tuple[int, ...] = (1, 2, 4, 8),
                   backends: tuple[str, ...] = tuple(BACKENDS), redis_db: int = BENCH_ENGINE_DB) -> dict[str, Any]:
    out: dict[str, Any] = {"tokens_per_task": tokens, "model": model}
    for backend in backends:
        services = Services(log_dir, model=model, worker_concurrency=4, redis_db=redis_db,
                            extra_env={"ASYNCLM_EMBEDDED_BATCHED": BACKENDS[backend]})
        services.start(say)
        try:
            runs = []
            for calls in (False, True):
                for n in ns:
                    runs.append(run_together(services, model, n, tokens, tools, calls))
                    say(f"  engine process, {backend}: {runs[-1]}")
        finally:
            services.stop()
        out[backend] = runs
    return out
