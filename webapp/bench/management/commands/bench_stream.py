"""Measure how long a decoded token takes to reach a websocket client of the running service.

Needs the service running (`make run`). Submits tasks as a dedicated `bench` user, follows them
over a real websocket (TCP, through daphne, the channel layer and the consumer) and compares
each token's receive time with the time the engine decoded it (the task's start on the engine's
wall clock plus the event's t_ms). Prints and saves the numbers.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

import websockets
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core.management.base import BaseCommand, CommandError

from webapp.core.redis import read_health
from webapp.runs.submit import submit_task


def bench_session() -> str:
    user, _ = get_user_model().objects.get_or_create(username="bench")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def follow(url: str, cookie: str, origin: str) -> list[tuple[float, dict]]:
    received: list[tuple[float, dict]] = []
    async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": origin}) as ws:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=300))
            now = time.time()
            for event in message.get("events", []):
                received.append((now, event))
                if event["kind"] == "finish":
                    return received


class Command(BaseCommand):
    help = "Token -> websocket latency of the running service (median over a run)."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running web server")
        parser.add_argument("--model", default=settings.ASYNCLM_DEFAULT_MODEL)
        parser.add_argument("--tasks", type=int, default=3)
        parser.add_argument("--max-tokens", type=int, default=200)
        parser.add_argument("--out", default=str(settings.VAR_DIR / "bench" / "stream.json"))

    def handle(self, *args, url, model, tasks, max_tokens, out, **options):
        health = read_health()
        if not health.redis_ok:
            raise CommandError(health.error)
        if not health.engines:
            raise CommandError("No engine is running: start the service with `make run` first.")
        cookie = f"{settings.SESSION_COOKIE_NAME}={bench_session()}"
        ws_base = url.replace("http", "ws", 1).rstrip("/")
        latencies: list[float] = []
        rates: list[float] = []
        for n in range(1, tasks + 1):
            task = submit_task(
                get_user_model().objects.get(username="bench"),
                prompt="Write a long numbered list of animals with one fact about each.",
                model=model, max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=0,
            )
            try:
                received = asyncio.run(follow(f"{ws_base}/ws/tasks/{task.pk}/", cookie, url))
            except OSError as exc:
                raise CommandError(f"cannot reach the web server at {url}: {exc}") from exc
            started = next(e["payload"]["started_at"] for _, e in received if e["kind"] == "status")
            task_lat = [(at - (started + e["t_ms"] / 1000)) * 1000 for at, e in received if e["kind"] == "token"]
            finish = received[-1][1]["payload"]
            latencies += task_lat
            if finish["metrics"].get("tokens_per_s"):
                rates.append(finish["metrics"]["tokens_per_s"])
            self.stdout.write(
                f"task {n}/{tasks} (#{task.pk}): {len(task_lat)} tokens, "
                f"{finish['metrics'].get('tokens_per_s')} tok/s, median token->websocket "
                f"{statistics.median(task_lat):.2f} ms" if task_lat else f"task {n}: no tokens ({finish['reason']})"
            )
        if not latencies:
            raise CommandError("no tokens were received")
        result = {
            "params": {"url": url, "model": model, "tasks": tasks, "max_tokens": max_tokens,
                       "machine": platform.node(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            "tokens": len(latencies),
            "token_to_websocket_ms": {"p10": percentile(latencies, 0.1), "median": statistics.median(latencies),
                                      "p90": percentile(latencies, 0.9), "max": max(latencies)},
            "decode_tokens_per_s": {"median": statistics.median(rates)} if rates else None,
        }
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        lat = result["token_to_websocket_ms"]
        self.stdout.write(self.style.SUCCESS(
            f"{len(latencies)} tokens: token->websocket p10 {lat['p10']:.2f} ms, median {lat['median']:.2f} ms, "
            f"p90 {lat['p90']:.2f} ms, max {lat['max']:.2f} ms; decode "
            f"{result['decode_tokens_per_s']} tok/s. Saved to {out}"))
