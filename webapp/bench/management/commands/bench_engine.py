"""`make bench-engine`: the engine's own costs, measured on this machine; prints and saves JSON.

- dispatch_ms / interrupt_ms: through the real system (an engine process, a Celery worker, Redis)
  on tasks whose tokens are forced from a script (every step is still a real forward pass of the
  embedded model; only the emitted token is scripted), so hundreds of calls happen regardless of
  what a small model would choose to write. Tasks run one at a time.
- inject_ms / reprefill_ms, overhead_ms_per_token, engine_tok_s / raw_tok_s: in this process, on
  the same model file.
- concurrency: 1/2/4/8 tasks on one engine, a context per task against the batched backend, in
  this process (webapp/bench/concurrency.py), then the same tasks through an engine process with a
  Celery worker running the calls, once per backend (`engine_processes`,
  webapp/bench/through_engine.py); `--only-concurrency` runs just that and adds it to --out.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from engine.backends.base import Sequence
from engine.backends.delegating import DelegatingBackend
from engine.backends.llamacpp import LlamaCppBackend
from engine.backends.llamacpp_batched import BatchedLlamaBackend
from engine.catalog import get_model
from engine.messages import Budgets, TaskSubmission
from engine.modelfiles import verified_adapter_path, verified_path
from engine.profiles import profile_for
from engine.scheduler import Scheduler
from engine.timeline import EventKind, Timeline
from engine.tools import ToolSpec
from webapp.bench.concurrency import concurrency, run_tasks
from webapp.bench.runner import BenchError
from webapp.bench.through_engine import through_engine
from webapp.core.processes import (
    Proc,
    ProcessError,
    redis_url,
    service_env,
    start_engine,
    start_worker,
)
from webapp.core.redis_dbs import BENCH_ENGINE_DB
from webapp.runs.models import Task, TraceEvent

FRAME = ' [INTR] c12 [HEAD] {"temp_c":18,"sky":"sunny","city":"Paris"} [END] '
LOOKUP = ToolSpec("lookup", "Look up a fact.", {"type": "object", "properties": {"q": {"type": "integer"}},
                                                "required": ["q"]},
                  est_latency_ms=30, timeout_s=10, kind="simulated",
                  config={"latency_ms": {"dist": "fixed", "value": 30}, "returns": {"answer": "int:1:99"}})


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def summary(values: list[float]) -> dict:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "n": len(values)}


def forced_script(calls: int, start: int) -> str:
    parts = []
    for i in range(start, start + calls):
        parts.append(f"Now looking up item {i}. [CALL] c{i} [HEAD] lookup(q={i}) [END] That call runs while I keep "
                     "writing a few more words about the item.")
    return " ".join(parts) + " Done."


class TimedBackend(DelegatingBackend):
    """The backend as the engine sees it, with the time spent in its forward passes (append and
    logits) added up, so the engine's own cost per token is the rest."""

    def __init__(self, inner: LlamaCppBackend) -> None:
        super().__init__(inner)
        self.inner = inner
        self.forward_s = 0.0

    def open_sequence(self, prompt_ids=()) -> Sequence:
        return TimedSequence(self, self.inner.open_sequence(prompt_ids))


class TimedSequence(Sequence):
    def __init__(self, backend: TimedBackend, inner: Sequence) -> None:
        self.backend, self.inner = backend, inner

    @property
    def n_tokens(self) -> int:
        return self.inner.n_tokens

    def append(self, ids) -> None:
        t0 = time.perf_counter()
        try:
            self.inner.append(ids)
        finally:
            self.backend.forward_s += time.perf_counter() - t0

    def logits(self) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.inner.logits()
        finally:
            self.backend.forward_s += time.perf_counter() - t0

    def truncate(self, n_tokens: int) -> None:
        self.inner.truncate(n_tokens)

    def close(self) -> None:
        self.inner.close()


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--model", default=settings.ASYNCLM_DEFAULT_MODEL)
        parser.add_argument("--calls", type=int, default=220, help="calls for dispatch/interrupt (>= 200)")
        parser.add_argument("--calls-per-task", type=int, default=20)
        parser.add_argument("--tokens", type=int, default=200, help="tokens for the decode-speed comparison")
        parser.add_argument("--out", default=str(settings.VAR_DIR / "bench" / "engine.json"))
        parser.add_argument("--sglang-url", default="",
                            help="only measure the SGLang path against this server: abort -> first new token of "
                                 "the resubmission, and the cache-hit ratio")
        parser.add_argument("--sglang-label", default="",
                            help='what the server is, recorded with the numbers (e.g. "SGLang 0.5.23 on H100" or '
                                 '"the tests\' SGLang imitation")')
        parser.add_argument("--interrupts", type=int, default=30, help="interrupts for the SGLang path")
        parser.add_argument("--only-concurrency", action="store_true",
                            help="run only the concurrency section (1/2/4/8 tasks on one engine: a context per "
                                 "task against the batched backend) and add it to --out")

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def handle(self, *args, model, calls, calls_per_task, tokens, out, sglang_url, sglang_label, interrupts,
               only_concurrency, **options):
        if sglang_url:
            return self.sglang(model, sglang_url, sglang_label, interrupts, out)
        spec = get_model(model)
        path = verified_path(spec, settings.ASYNCLM_MODEL_DIR)
        if only_concurrency:
            previous = json.loads(Path(out).read_text()) if Path(out).exists() else {}
            previous["concurrency"] = self.concurrency(spec, path)
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(previous, indent=2))
            return self.say(self.style.SUCCESS(f"saved the concurrency section in {out}"))
        result = {"params": {"model": model, "calls": calls, "tokens": tokens, "machine": platform.node(),
                             "cpu_count": os.cpu_count(), "threads": settings.ASYNCLM_ENGINE_THREADS,
                             "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "note": "dispatch/interrupt from forced-token tasks (real forward passes)"}}
        adapter = verified_adapter_path(spec, settings.BASE_DIR) if spec.adapter else None
        backend = LlamaCppBackend(spec, path, adapter_path=adapter, n_ctx=2048,
                                  n_threads=settings.ASYNCLM_ENGINE_THREADS)
        self.say("[1/4] injection vs re-prefill")
        result["inject_ms"], result["reprefill_ms"] = self.injection(backend)
        self.say("[2/4] engine vs raw decode speed")
        result.update(self.decode_speed(backend, tokens))
        backend = None
        self.say(f"[3/4] dispatch and interrupt latency over {calls} calls through engine, worker and Redis")
        result.update(self.system(model, calls, calls_per_task))
        self.say("[4/4] several tasks on one engine: a context per task against the batched backend")
        result["concurrency"] = self.concurrency(spec, path)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        self.say(json.dumps({k: v for k, v in result.items() if k != "params"}, indent=2))
        self.say(self.style.SUCCESS(f"saved {out}"))

    def concurrency(self, spec, path) -> dict:
        adapter = verified_adapter_path(spec, settings.BASE_DIR) if spec.adapter else None
        threads = settings.ASYNCLM_ENGINE_THREADS
        before = LlamaCppBackend(spec, path, adapter_path=adapter, n_ctx=2048, n_threads=threads, max_idle_contexts=8)
        after = BatchedLlamaBackend(spec, path, adapter_path=adapter, n_ctx=2048, n_threads=threads, n_seq=16,
                                    step_tokens=settings.ASYNCLM_ENGINE_STEP_TOKENS)
        for backend in (before, after):  # contexts made and caches warm before anything is timed
            run_tasks(backend, 8, 4, [LOOKUP], calls=False)
        def make(budget: int) -> BatchedLlamaBackend:
            return BatchedLlamaBackend(spec, path, adapter_path=adapter, n_ctx=2048, n_threads=threads, n_seq=8,
                                       step_tokens=budget)

        result = concurrency(before, after, [LOOKUP], say=self.say, make_batched=make)
        result["step_tokens"] = settings.ASYNCLM_ENGINE_STEP_TOKENS
        del before, after  # their memory, before the engine processes load the model again
        self.say("  the same tasks through an engine process, its calls on a Celery worker:")
        try:
            result["engine_processes"] = through_engine(spec.name, [LOOKUP], settings.VAR_DIR / "bench", self.say)
        except BenchError as exc:
            raise CommandError(str(exc)) from None
        return result

    # -- the SGLang path ------------------------------------------------------------------------
    def sglang(self, model: str, url: str, label: str, interrupts: int, out: str) -> None:
        """Interrupts by abort and resubmit on one growing context: after 8 streamed tokens, abort,
        read the stream to its end, resubmit with a 28-token frame appended; the time from the
        abort going out to the first chunk of the resubmission, and cached over already-seen tokens."""
        from engine.backends.base import StreamEnd
        from engine.backends.sglang import SGLangBackend
        from engine.profiles import chat_prompt_ids

        if not label:
            raise CommandError("--sglang-label is required: say what the server is (real SGLang or the imitation)")
        backend = SGLangBackend(get_model(model), url)
        seq = backend.open_sequence()
        params = backend.sampling_params(max_new_tokens=4000, temperature=0.0, top_p=1.0, seed=0)
        frame = backend.tokenize(FRAME)[:28]
        seq.submit(chat_prompt_ids(backend, "Write a very long story about a lighthouse keeper."), params, "prompt")
        for i in range(interrupts):
            streamed, ended = 0, False
            while not ended:
                for item in seq.poll():
                    if isinstance(item, StreamEnd):
                        if item.finish == "error":
                            raise CommandError(f"the server failed: {item.message}")
                        ended = True
                    else:
                        streamed += 1
                if streamed >= 8:
                    seq.abort()
                time.sleep(0.001)
            seq.submit(frame, params, "interrupt")
            self.say(f"interrupt {i + 1}/{interrupts}")
        while seq.streaming or not seq.submissions[-1].prompt_tokens:
            seq.abort()
            time.sleep(0.01)
        subs = [s for s in seq.submissions if s.reason == "interrupt"]
        overheads = [s.abort_to_first_token_ms for s in subs if s.abort_to_first_token_ms is not None]
        cached = sum(min(s.cached_tokens or 0, s.expected_cached) for s in subs)
        expected = sum(s.expected_cached for s in subs)
        result = {
            "params": {"model": model, "server": url, "server_is": label, "served": backend.served,
                       "interrupts": len(subs),
                       "frame_tokens": len(frame), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "machine": platform.node()},
            "sglang_abort_to_first_token_ms": summary(overheads),
            "sglang_cache_hit_ratio": round(cached / expected, 4) if expected else None,
            "sglang_context_tokens_at_end": seq.n_tokens,
        }
        path = Path(out).with_name("engine-sglang.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        self.say(json.dumps(result, indent=2))
        self.say(self.style.SUCCESS(f"saved {path}"))

    # -- in-process measurements ------------------------------------------------------------
    def injection(self, backend: LlamaCppBackend) -> tuple[dict, dict]:
        frame = backend.tokenize(FRAME)[:28]
        filler = backend.tokenize("The quick brown fox jumps over the lazy dog while it rains. " * 200)
        inject, reprefill = {}, {}
        for n in (200, 600, 1200):
            context = filler[:n]
            live, again = [], []
            for _ in range(3):
                seq = backend.open_sequence()
                seq.truncate(0)
                seq.append(context)
                t = time.perf_counter()
                seq.append(frame)
                live.append((time.perf_counter() - t) * 1000)
                seq.truncate(0)  # empty cache: nothing of the context may be reused
                t = time.perf_counter()
                seq.append(context + frame)
                again.append((time.perf_counter() - t) * 1000)
                seq.close()
            inject[str(n)] = round(statistics.median(live), 2)
            reprefill[str(n)] = round(statistics.median(again), 2)
            self.say(f"  context {n}: inject 28 tokens {inject[str(n)]} ms, re-prefill {reprefill[str(n)]} ms "
                     f"({reprefill[str(n)] / inject[str(n)]:.1f}x)")
        return inject, reprefill

    def decode_speed(self, backend: LlamaCppBackend, tokens: int) -> dict:
        story = "Once upon a time " + "the keeper climbed the stairs and lit the lamp again. " * 40
        sub = TaskSubmission(1, backend.spec.name, "Write a long story about a lighthouse keeper.", tokens, time.time(),
                             tools=[LOOKUP.to_dict()], forced_text=story)
        prompt = profile_for(backend.spec).prompt_ids(backend, sub.prompt, [LOOKUP], sub.mode)
        # Raw: a bare llama-cpp-python loop, greedy, on the same prompt as the engine's. Run before and
        # after the engine and keep the faster, so machine noise cannot flatter the engine.
        def raw_tok_s() -> float:
            seq = backend.open_sequence()
            llama = seq.llama
            llama.reset()
            llama.eval(prompt)
            token = int(np.argmax(seq.logits_view()))
            t = time.perf_counter()
            for _ in range(tokens):
                llama.eval([token])
                token = int(np.argmax(seq.logits_view()))
            elapsed = time.perf_counter() - t
            seq.close()
            return tokens / elapsed

        raw_before = raw_tok_s()
        # Engine: the same decode through the scheduler, with a tool list so the CML monitor and the
        # [INTR] ban run on every token; forward passes timed separately.
        timed = TimedBackend(backend)
        scheduler = Scheduler(lambda name: timed)
        scheduler.submit(sub)
        while scheduler.task(1).status.value == "prefill":
            scheduler.step()
        scheduler.local.warm(timed)  # build the ban tables outside the timed loop
        timed.forward_s = 0.0
        t = time.perf_counter()
        steps = 0
        while scheduler.has_work():
            scheduler.step()
            steps += 1
        engine_s = time.perf_counter() - t
        overhead = (engine_s - timed.forward_s) / steps * 1000
        raw = max(raw_before, raw_tok_s())
        out = {"engine_tok_s": round(steps / engine_s, 2), "raw_tok_s": round(raw, 2),
               "overhead_ms_per_token": round(overhead, 3)}
        self.say(f"  raw {out['raw_tok_s']} tok/s, engine {out['engine_tok_s']} tok/s "
                 f"({out['engine_tok_s'] / out['raw_tok_s']:.1%}), overhead {out['overhead_ms_per_token']} ms/token")
        return out

    # -- through the running system ---------------------------------------------------------
    def system(self, model: str, calls: int, per_task: int) -> dict:
        # A Redis database of its own, so a running service's engines never take these tasks.
        url = redis_url(BENCH_ENGINE_DB)
        client = redis.Redis.from_url(url)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise CommandError(f"Redis is not reachable at {url}: {exc}") from exc
        for key in client.scan_iter(match="asynclm:*"):
            client.delete(key)
        env, log_dir = service_env(url), settings.VAR_DIR / "bench"
        procs: list[Proc] = []
        try:
            procs.append(start_worker(f"bench-{os.getpid()}@localhost", env, log_dir, client, loglevel="WARNING",
                                      timeout=90))
            procs.append(start_engine(f"bench-engine-{os.getpid()}", model, env, log_dir, client, timeout=90))
            return self.measure_calls(client, model, calls, per_task)
        except ProcessError as exc:
            raise CommandError(str(exc)) from None
        finally:
            for proc in procs:
                proc.kill(timeout=30)

    def measure_calls(self, client, model: str, calls: int, per_task: int) -> dict:
        from engine.intake import Intake

        user, _ = get_user_model().objects.get_or_create(username="bench")
        intake = Intake(client)
        dispatch, interrupt, tasks = [], [], []
        done = 0
        while done < calls:
            n = min(per_task, calls - done)
            task = Task.objects.create(owner=user, prompt="(forced benchmark task)", model=model, max_tokens=4000,
                                       mode="async", tools=[LOOKUP.to_dict()], max_calls=n + 1)
            intake.submit(TaskSubmission(task.pk, model, task.prompt, 4000, time.time(), tools=[LOOKUP.to_dict()],
                                         budgets=Budgets(max_calls=n + 1), forced_text=forced_script(n, done)))
            while not Task.objects.get(pk=task.pk).is_final:
                time.sleep(0.2)
            task.refresh_from_db()
            if task.status != "finished":
                raise CommandError(f"benchmark task {task.pk} ended {task.status}: {task.status_reason}")
            d, i = self.latencies(task)
            dispatch += d
            interrupt += i
            tasks.append(task.pk)
            done += n
            self.say(f"  {done}/{calls} calls: dispatch p50 {pct(dispatch, 50)} ms, "
                     f"interrupt p50 {pct(interrupt, 50) if interrupt else '-'} ms")
        return {"dispatch_ms": summary(dispatch), "interrupt_ms": summary(interrupt), "bench_task_ids": tasks}

    @staticmethod
    def latencies(task: Task) -> tuple[list[float], list[float]]:
        events = list(TraceEvent.objects.filter(task=task).order_by("seq"))
        calls = Timeline.of(events).calls
        # The worker's report carries more than the reducer keeps: when it was received and picked up.
        finished = {e.payload["call_id"]: e.payload for e in events if e.kind == EventKind.CALL_FINISHED}
        queued_outside = {e.payload["call_id"] for e in events
                          if e.kind == "interrupt_queued" and not e.payload["critical"]}
        dispatch = [c.started_ms - c.decoded_ms for c in calls.values()
                    if c.started_ms is not None and c.decoded_ms is not None]
        interrupt = []
        for e in events:
            if e.kind != "interrupt_injected" or len(e.payload["calls"]) != 1:
                continue
            (call_id,) = e.payload["calls"]
            f = finished.get(call_id)
            if f is None or call_id not in queued_outside:
                continue  # arrived inside a critical section: deferred on purpose
            # transit to this process + handling after the in-flight decode step finished
            interrupt.append((f["received_ms"] - f["at_ms"]) + (e.payload["began_ms"] - f["picked_ms"]))
        return dispatch, interrupt
