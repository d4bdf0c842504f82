"""Running benchmark scenarios through the real service: an engine process, Celery workers and
Redis (started here unless told to use running ones), tasks in the database, latency read from
the stored trace (first generated token -> last)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth import get_user_model

from engine import health
from engine.intake import Intake
from engine.messages import Budgets, Sampling, TaskSubmission
from webapp.bench import plan
from webapp.bench.scenarios import Scenario
from webapp.runs.models import Task, TraceEvent

BENCH_REDIS_DB = 11  # its own database: a running service's engines never take bench tasks


class BenchError(Exception):
    pass


@dataclass
class Services:
    """Redis, an engine with the simulated decoder and a Celery worker, all for the benchmark."""

    log_dir: Path
    worker_concurrency: int = 12
    redis_url: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)
    redis_pid_file: Path | None = None

    def start(self, say: Callable[[str], None]) -> None:
        base = urllib.parse.urlparse(settings.REDIS_URL)
        host, port = base.hostname or "127.0.0.1", base.port or 6379
        if not _answers(host, port):
            if not shutil.which("redis-server"):
                raise BenchError(f"no Redis answers at {host}:{port} and redis-server is not installed")
            say(f"no Redis answers at {host}:{port}: starting a private one")
            self.redis_pid_file = self.log_dir / f"redis-{port}.pid"
            subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                            "--appendonly", "no", "--daemonize", "yes", "--pidfile", str(self.redis_pid_file)],
                           check=True, stdout=subprocess.DEVNULL)
            _wait(lambda: _answers(host, port), 10, "the private Redis")
        self.redis_url = f"redis://{host}:{port}/{BENCH_REDIS_DB}"
        client = redis.Redis.from_url(self.redis_url)
        client.flushdb()
        env = {**os.environ, "REDIS_URL": self.redis_url, "CELERY_BROKER_URL": self.redis_url,
               "CELERY_RESULT_BACKEND": self.redis_url, "ASYNCLM_TEST_REDIS_DB": str(BENCH_REDIS_DB),
               "DJANGO_SETTINGS_MODULE": os.environ.get(
                   "DJANGO_SETTINGS_MODULE", "webapp.settings.local"), "LOG_LEVEL": "WARNING"}
        engine_id, worker_id = f"bench-engine-{os.getpid()}", f"bench-worker-{os.getpid()}@localhost"
        self._spawn("engine", [sys.executable, "manage.py", "run_engine", "--preload", "simulated", "--id",
                               engine_id, "--max-active", "8"], env)
        self._spawn("worker", [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", "default,tools",
                               "--pool", "prefork", "--concurrency", str(self.worker_concurrency), "-n", worker_id,
                               "--loglevel", "WARNING"], env)
        say(f"started an engine and a Celery worker ({self.worker_concurrency} processes) on {self.redis_url}")
        _wait(lambda: any(b["id"] == engine_id for b in health.alive(client, "engine")), 60, "the engine", self)
        _wait(lambda: any(b["id"] == worker_id for b in health.alive(client, "worker")), 60, "the worker", self)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = (self.log_dir / f"bench-{name}.log").open("w")
        self.procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=settings.BASE_DIR))

    def dead(self) -> str:
        for proc in self.procs:
            if proc.poll() is not None:
                name = proc.args[2] if len(proc.args) > 2 else proc.args
                return f"{name} exited ({proc.returncode}); see the logs in {self.log_dir}"
        return ""

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.redis_pid_file and self.redis_pid_file.exists():
            subprocess.run(["kill", self.redis_pid_file.read_text().strip()], check=False)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return redis.Redis(host=host, port=port, socket_timeout=1).ping()
    except (OSError, redis.RedisError):
        return False


def _wait(predicate: Callable[[], bool], seconds: float, what: str, services: Services | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if services and services.dead():
            raise BenchError(services.dead())
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not start within {seconds:g} s")
        time.sleep(0.2)


def bench_user():  # noqa: ANN201
    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_active": False})
    return user


def run_scenario(services: Services, scenario: Scenario, mode: str, *, token_ms: float, inject_ms: float,
                 seed: int, timeout_s: float = 120.0) -> dict[str, Any]:
    """One (scenario, mode) through the engine; returns its scenarios.jsonl line."""
    tools = plan.tools(scenario)
    task = Task.objects.create(owner=bench_user(), prompt=plan.prompt(scenario, token_ms, inject_ms),
                               model="simulated", max_tokens=20000, seed=seed, mode=mode, tools=tools,
                               max_calls=len(scenario.calls) + 8, max_wall_s=timeout_s)
    client = redis.Redis.from_url(services.redis_url)
    Intake(client).submit(TaskSubmission(task.pk, "simulated", task.prompt, task.max_tokens, time.time(),
                                         Sampling(seed=seed), mode=mode, tools=tools,
                                         budgets=Budgets(max_calls=task.max_calls, max_wall_s=timeout_s)))
    deadline = time.monotonic() + timeout_s + 30
    while not Task.objects.filter(pk=task.pk, status__in=Task.FINAL).exists():
        if services.dead():
            raise BenchError(services.dead())
        if time.monotonic() > deadline:
            raise BenchError(f"task {task.pk} ({scenario.id}, {mode}) did not end within {timeout_s + 30:g} s")
        time.sleep(0.05)
    task.refresh_from_db()
    return measure(task, scenario, mode, token_ms=token_ms, inject_ms=inject_ms)


def measure(task: Task, scenario: Scenario, mode: str, *, token_ms: float, inject_ms: float) -> dict[str, Any]:
    events = list(TraceEvent.objects.filter(task=task).order_by("seq"))
    tokens = [e.t_ms for e in events if e.kind == "token"]
    injected = {e.payload["call_id"]: e.payload["injected"] for e in events if e.kind == "call_result"}
    started = {e.payload["call_id"]: e.payload["at_ms"] for e in events if e.kind == "call_started"}
    finished = {e.payload["call_id"]: e.payload["at_ms"] for e in events if e.kind == "call_finished"}
    errors = [e.payload.get("error", "") for e in events if e.kind in ("call_error", "malformed")]
    errors += [f"{e.payload['call_id']}: {e.payload['error']}" for e in events
               if e.kind == "call_result" and not e.payload["ok"]]
    if task.status != Task.Status.FINISHED:
        errors.append(f"task {task.status}: {task.status_reason}")
    latency = round(tokens[-1] - tokens[0], 3) if len(tokens) > 1 else None
    bound = plan.bound(scenario, mode, token_ms, inject_ms, injected)
    return {
        "scenario": scenario.id, "dataset": scenario.dataset, "decoder": "simulated", "mode": mode,
        "task_id": task.pk, "latency_ms": latency, "bound_ms": bound,
        "measured_over_bound": round(latency / bound, 4) if latency and bound else None,
        "tokens": len(tokens), "injected_tokens": sum(e.payload["tokens"] for e in events
                                                     if e.kind == "interrupt_injected"),
        "calls": [{"call_id": plan.call_id(c.index), "name": c.name, "drawn_latency_ms": c.latency_ms,
                   "started_ms": started.get(plan.call_id(c.index)), "finished_ms": finished.get(plan.call_id(c.index))}
                  for c in scenario.calls],
        "errors": errors, "sources": scenario.sources,
    }
