"""`make bench-tools`: zero-latency simulated calls through real Celery workers; calls/s and
latency from enqueue to the result arriving on the engine's stream, with nothing lost. Then the
MCP row: calls of an MCP tool that answers at once, on a local streamable HTTP server (the tests'
MCP server), and the time each spends in the worker (started -> finished: the worker's session,
the HTTP round trip, the server) against the same for the zero-latency simulated tool."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from engine.keys import inbox_stream
from engine.messages import CallReport, CallRequest
from engine.tools import ToolSpec
from webapp.celery import app
from webapp.core.processes import (
    ProcessError,
    free_port,
    listening,
    redis_url,
    service_env,
    start_worker,
)
from webapp.core.redis_dbs import BENCH_ENGINE_DB

ZERO = ToolSpec(
    "noop",
    "returns at once",
    {"type": "object", "properties": {"i": {"type": "integer"}}},
    est_latency_ms=0,
    timeout_s=10,
    kind="simulated",
    config={"latency_ms": {"dist": "fixed", "value": 0}, "returns": {"i": "arg:i"}},
)
MCP_SERVER = Path(settings.BASE_DIR) / "tests" / "mcp_servers.py"


def mcp_echo(url: str) -> ToolSpec:
    return ToolSpec("echo", "returns its argument", {"type": "object", "properties": {"i": {"type": "integer"}}},
                    est_latency_ms=0, timeout_s=10, kind="mcp",
                    config={"transport": "http", "url": url, "command": "", "server": "bench", "tool": "echo"})


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--calls", type=int, default=3000)
        parser.add_argument("--workers", type=int, default=2, help="worker processes (prefork concurrency)")
        parser.add_argument("--paced-rate", type=float, default=100.0,
                            help="then enqueue at this many calls/s (0 skips) for the latency below saturation")
        parser.add_argument("--mcp-calls", type=int, default=400, help="MCP calls, paced (0 skips the MCP row)")
        parser.add_argument("--mcp-rate", type=float, default=20.0,
                            help="calls/s of the MCP row: below what the workers and the server (on the same "
                                 "cores here) can take, so that it measures the call, not a queue")
        parser.add_argument("--mcp-responses", choices=["json", "sse"], default="json",
                            help="how the MCP server answers a call: one JSON body (default), or an event "
                                 "stream (the SDK server's default, for servers that stream progress)")
        parser.add_argument("--out", default=str(settings.VAR_DIR / "bench" / "tools.json"))

    def handle(self, *args, calls, workers, paced_rate, mcp_calls, mcp_rate, mcp_responses, out, **options):
        url = redis_url(BENCH_ENGINE_DB)  # its own database: no service sees these
        r = redis.Redis.from_url(url)
        try:
            r.ping()
        except redis.RedisError as exc:
            raise CommandError(f"Redis is not reachable at {url}: {exc}") from exc
        r.flushdb()
        try:
            worker = start_worker(f"bench-tools-{os.getpid()}@localhost", service_env(url), settings.VAR_DIR / "bench",
                                  r, concurrency=workers, loglevel="WARNING")
        except ProcessError as exc:
            raise CommandError(str(exc)) from None
        try:
            result = self.run_calls(r, url, calls, "burst")
            if paced_rate > 0:
                result["paced"] = self.run_calls(r, url, min(calls, int(paced_rate * 10)), "paced", paced_rate)
            if mcp_calls > 0:
                result["mcp"] = self.mcp_row(r, url, mcp_calls, mcp_rate, mcp_responses)
        finally:
            worker.kill(timeout=30)
        result["workers"] = workers
        result["params"] = {
            "machine": platform.node(),
            "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tool": "simulated, 0 ms",
        }
        Path(out).write_text(json.dumps(result, indent=2))
        self.stdout.write(json.dumps(result, indent=2))
        self.stdout.write(self.style.SUCCESS(f"saved {out}"))

    def mcp_row(self, r: redis.Redis, url: str, calls: int, rate: float, responses: str) -> dict:
        """The same paced calls to the zero-latency simulated tool and to an MCP tool that answers at
        once; the MCP overhead is the difference of their time in the worker."""
        if not MCP_SERVER.exists():
            raise CommandError(f"the MCP row needs the tests' MCP server ({MCP_SERVER}); --mcp-calls 0 skips it")
        port = free_port()
        log = (settings.VAR_DIR / "bench" / "mcp-server.log").open("w")
        command = [sys.executable, str(MCP_SERVER), "http", "--port", str(port)]
        if responses == "json":
            command.append("--json-response")
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not listening(port):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise CommandError(f"the MCP server did not start (see {log.name})")
                time.sleep(0.1)
            simulated = self.run_calls(r, url, calls, "mcp-baseline", rate)
            mcp = self.run_calls(r, url, calls, "mcp", rate, tool=mcp_echo(f"http://127.0.0.1:{port}/mcp"))
        finally:
            server.terminate()
            server.wait(10)
            log.close()
        overhead = None
        if mcp["in_worker_ms"] and simulated["in_worker_ms"]:
            overhead = {k: round(mcp["in_worker_ms"][k] - simulated["in_worker_ms"][k], 2) for k in ("p50", "p99")}
        return {"server": f"tests/mcp_servers.py over streamable HTTP on 127.0.0.1, {responses} responses",
                "simulated_zero": simulated,
                "mcp_echo": mcp, "mcp_overhead_ms": overhead}

    def run_calls(self, r: redis.Redis, url: str, calls: int, name: str, rate: float | None = None,
                  tool: ToolSpec = ZERO) -> dict:
        """Enqueue `calls` calls all at once (saturation: calls/s) or at `rate` calls/s (latency)."""
        engine_id = f"bench-tools-{name}"
        sent: dict[str, float] = {}
        arrived: dict[str, float] = {}
        started: dict[str, float] = {}
        finished: dict[str, float] = {}
        done = threading.Event()

        def read() -> None:
            last = "0"
            while not done.is_set():
                for _, entries in r.xread({inbox_stream(engine_id): last}, count=500, block=200) or []:
                    now = time.time()
                    for entry_id, fields in entries:
                        last = entry_id
                        rep = CallReport.from_json(fields[b"r"])
                        if rep.phase == "started":
                            started.setdefault(rep.call_id, rep.at)
                        elif rep.phase == "finished" and rep.ok:
                            arrived.setdefault(rep.call_id, now)
                            finished.setdefault(rep.call_id, rep.at)
                if len(arrived) >= calls:
                    done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        start = time.time()
        with (
            app.connection_for_write(url) as connection,
            app.producer_or_acquire(app.amqp.Producer(connection)) as producer,
        ):
            for i in range(calls):
                call_id = f"c{i}"
                if rate:
                    time.sleep(max(0.0, start + i / rate - time.time()))
                sent[call_id] = time.time()
                request = CallRequest(1, call_id, engine_id, tool.to_dict(), {"i": i}, sent[call_id])
                app.send_task(
                    "workers.tasks.run_tool",
                    args=[request.to_dict()],
                    queue="tools",
                    producer=producer,
                    ignore_result=True,  # as the engine sends them: results come on its inbox
                    soft_time_limit=10,
                    time_limit=11,
                )
        self.stdout.write(f"{name}: enqueued {calls} calls in {time.time() - start:.2f} s; waiting for results")
        done.wait(timeout=120)
        done.set()
        reader.join(2)
        latencies = [(arrived[c] - sent[c]) * 1000 for c in arrived]
        in_worker = [(finished[c] - started[c]) * 1000 for c in finished if c in started]
        to_start = [(started[c] - sent[c]) * 1000 for c in started if c in sent]
        elapsed = max(arrived.values()) - start if arrived else float("inf")
        return {
            "enqueue": f"at {rate:g} calls/s" if rate else "all at once",
            "calls": calls,
            "delivered": len(arrived),
            "lost": calls - len(arrived),
            "calls_per_s": round(len(arrived) / elapsed, 1),
            "latency_ms": {
                "p50": round(float(np.percentile(latencies, 50)), 2),
                "p99": round(float(np.percentile(latencies, 99)), 2),
            }
            if latencies
            else None,
            # enqueue -> the worker process starts the call (the engine's dispatch hop: broker, the
            # worker's consumer, the hand-off to a pool process)
            "to_start_ms": {
                "p50": round(float(np.percentile(to_start, 50)), 3),
                "p99": round(float(np.percentile(to_start, 99)), 3),
            }
            if to_start
            else None,
            "in_worker_ms": {
                "p50": round(float(np.percentile(in_worker, 50)), 3),
                "p99": round(float(np.percentile(in_worker, 99)), 3),
            }
            if in_worker
            else None,
        }

