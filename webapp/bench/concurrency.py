"""Several tasks on one engine (`make bench-engine`, the concurrency section): the per-context
backend (round-robin, one token per step) against the batched one (one batch per step), in this
process through the engine's scheduler, on the same model file and in the same run.

- ceiling: what the machine can do at best: llama-cpp-python evaluating N tokens of one
  sequence at once against one token, with the logits of the last token only (`eval`) and with
  every token's logits (the arithmetic of one token of each of N sequences, each of which needs
  its own next-token logits).
- plain / with calls: N tasks of `tokens` generated tokens each, started together. Tokens are
  forced from a text (every step is still a real forward pass; only the emitted token is
  scripted), so every task writes exactly as much in every run; "with calls" writes CML calls of a
  30 ms tool in async mode, answered in this process, so interrupts land while others decode.
  Aggregate tokens/s (all tokens / first token to last), per-task tokens/s p50, and time to first
  token p50.
- alone: one task on each backend, alternated in pairs (a task alone must lose little to batching).
- shared prefix: time to first token of a task whose prompt (system prompt and tools) is already
  in the cache of a running task, against a cold one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.backends.base import LocalBackend
from engine.messages import Budgets, Sampling, TaskSubmission
from engine.profiles import profile_for
from engine.scheduler import Scheduler
from engine.tools import ToolSpec

STORY = "Once upon a time " + "the keeper climbed the stairs and lit the lamp again, slowly. " * 60
QUESTION = "Write a long story about a lighthouse keeper, number {i}."
CALL_LATENCY_S = 0.03


def ceiling(backend: Any, prompt: list[int], n: int, repeats: int = 12, batched: Any = None) -> dict[str, Any]:
    """ms per evaluation of 1 and of N tokens of one sequence (a per-context backend's) after the
    tasks' own prompt (attention over as long a context as theirs), alternated so that both see
    the machine at the same speed, two ways:
    - `last`: llama-cpp-python's `eval`, which computes the next-token logits of the last token only;
    - `all`: the same tokens with every one's logits computed and read out, which is the arithmetic
      of one token of each of N sequences: each needs its own next-token logits, and the output
      layer (vocabulary x hidden size) is about a quarter of a small model's multiply-adds.
    With `batched` (the batched backend), a third way in the same rounds: one token of each of 1
    and of N sequences of its own context, each holding the same prompt, evaluated by one `flush`
    (`ms_batched`; `batched_of_all` = ms_all / ms_batched): the backend's batch against the
    arithmetic it cannot avoid, without the scheduler's work per token.
    Returns {"1": {...}, "N": {...}} with `ms`, `ms_all` and the speedups in tokens/s over 1 token."""
    import llama_cpp

    seq = backend.open_sequence()
    llama = seq.llama
    batch = llama_cpp.llama_batch_init(max(n, 1), 0, 1)
    head = prompt[:-max(n, 1)]

    def timed(k: int, every: bool) -> float:
        llama.reset()
        llama.eval(head)
        tokens = prompt[len(head):len(head) + k]
        t = time.perf_counter()
        if not every:
            llama.eval(tokens)
        else:
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, len(head) + i, 1, 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = k
            if llama_cpp.llama_decode(llama._ctx.ctx, batch) != 0:
                raise RuntimeError(f"llama_decode of {k} tokens failed")
            for i in range(k):  # as the batched backend copies each sequence's logits
                row = llama_cpp.llama_get_logits_ith(llama._ctx.ctx, i)
                np.ctypeslib.as_array(row, shape=(llama.n_vocab(),)).copy()
        return (time.perf_counter() - t) * 1000

    seqs = [] if batched is None else [batched.open_sequence(head) for _ in range(max(n, 1))]
    for other in seqs:
        other.append(head[other.n_tokens:])
    if batched is not None:
        batched.flush(everything=True)

    def timed_batched(k: int) -> float:
        for other in seqs[:k]:
            other.truncate(len(head))
            other.append(prompt[len(head):len(head) + 1])
        t = time.perf_counter()
        batched.flush()  # copies each sequence's logits, as the ceiling's `all` reads them out
        return (time.perf_counter() - t) * 1000

    times: dict[tuple[int, str], list[float]] = {}
    ways = ("last", "all", "batched") if seqs else ("last", "all")
    try:
        for _ in range(repeats):
            for k in dict.fromkeys((1, n)):
                for way in ways:
                    ms = timed_batched(k) if way == "batched" else timed(k, way == "all")
                    times.setdefault((k, way), []).append(ms)
    finally:
        llama_cpp.llama_batch_free(batch)
        seq.close()
        for other in seqs:
            other.close()
    out: dict[str, Any] = {}
    one, one_all = (statistics.median(times[(1, way)]) for way in ("last", "all"))
    for k in dict.fromkeys((1, n)):
        ms, ms_all = (statistics.median(times[(k, way)]) for way in ("last", "all"))
        out[str(k)] = {"ms": round(ms, 2), "ms_all": round(ms_all, 2), "speedup": round(k * one / ms, 2),
                       "speedup_all": round(k * one_all / ms_all, 2)}
        if seqs:
            ms_batched = statistics.median(times[(k, "batched")])
            out[str(k)].update(ms_batched=round(ms_batched, 2), batched_of_all=round(ms_all / ms_batched, 3))
    return out


def scripted_text(calls: bool, i: int) -> str:
    if not calls:
        return STORY
    return " ".join(f"Item {j}. [CALL] c{j} [HEAD] lookup(q={i * 100 + j}) [END] and on I write about it for "
                    "a while, more words." for j in range(1, 12)) + " " + STORY


def run_tasks(backend: LocalBackend, n: int, tokens: int, tools: list[ToolSpec], calls: bool,
              prompts: Callable[[int], str] = QUESTION.format) -> dict[str, Any]:
    """N tasks started together through the scheduler; results of calls come back after
    CALL_LATENCY_S (a timer in this loop, as a worker's result would)."""
    scheduler = Scheduler(lambda name: backend)
    start = time.perf_counter()
    for i in range(n):
        scheduler.submit(TaskSubmission(i + 1, backend.spec.name, prompts(i=i), tokens, time.time(), Sampling(),
                                        mode="async", tools=[t.to_dict() for t in tools],
                                        budgets=Budgets(max_calls=50), forced_text=scripted_text(calls, i)))
    due: list[tuple[float, int, str]] = []
    stamps: dict[int, list[float]] = {i + 1: [] for i in range(n)}
    while scheduler.has_work() or due:
        for event in scheduler.step():
            if event.kind == "token":
                stamps[event.task_id].append(time.perf_counter())
        for request in scheduler.take_dispatches():
            due.append((time.perf_counter() + CALL_LATENCY_S, request.task_id, request.call_id))
        now = time.perf_counter()
        for item in [d for d in due if d[0] <= now]:
            due.remove(item)
            scheduler.deliver(item[1], item[2], ok=True, value={"answer": 7})
        if not scheduler.worked and not scheduler.has_work() and due:
            time.sleep(max(0.0, min(d[0] for d in due) - time.perf_counter()))
    return {"tasks": n, **figures(list(stamps.values()), start)}


def figures(stamps: list[list[float]], start: float) -> dict[str, Any]:
    """From each task's token times (seconds, one clock with `start`, when the tasks were
    submitted): all tokens, aggregate tokens/s (first token to last, across tasks), per-task
    tokens/s p50 and time to first token p50."""
    firsts = [s[0] for s in stamps if s]
    total = sum(len(s) for s in stamps)
    per_task = [(len(s) - 1) / (s[-1] - s[0]) for s in stamps if len(s) > 1]
    return {"tokens": total,
            "aggregate_tok_s": round(total / (max(s[-1] for s in stamps if s) - min(firsts)), 2) if total > 1 else None,
            "per_task_tok_s_p50": round(statistics.median(per_task), 2) if per_task else None,
            "ttft_ms_p50": round(statistics.median([(f - start) * 1000 for f in firsts]), 1) if firsts else None}


def shared_prefix_ttft(backend: Any, tools: list[ToolSpec], tokens: int = 64) -> dict[str, Any]:
    """TTFT of a task whose system prompt and tools a running task already holds, against a cold
    start of the same task on an empty engine (`backend`: a llama.cpp backend, which can drop its
    cache)."""
    def first_token(scheduler: Scheduler, task_id: int, text: str, others: bool) -> float:
        start = time.perf_counter()
        scheduler.submit(TaskSubmission(task_id, backend.spec.name, text, tokens, time.time(), Sampling(),
                                        mode="async", tools=[t.to_dict() for t in tools], forced_text=STORY))
        while True:
            for event in scheduler.step():
                if event.kind == "token" and event.task_id == task_id:
                    return (time.perf_counter() - start) * 1000
            if not scheduler.has_work() and not others:
                raise RuntimeError("the task ended without a token")

    cold_scheduler = Scheduler(lambda name: backend)
    backend.drop_cache()
    cold = first_token(cold_scheduler, 1, "Tell me about lighthouses in Norway.", others=False)
    _drain(cold_scheduler)
    backend.drop_cache()
    warm_scheduler = Scheduler(lambda name: backend)
    first_token(warm_scheduler, 2, "Tell me about lighthouses in Chile.", others=False)
    warm = first_token(warm_scheduler, 3, "Tell me about lighthouses in Norway.", others=True)
    _drain(warm_scheduler)
    return {"cold_ms": round(cold, 1), "shared_prefix_ms": round(warm, 1), "ratio": round(warm / cold, 3)}


def budget_sweep(make: Callable[[int], Any], tools: list[ToolSpec], budgets: tuple[int, ...] = (32, 64, 128, 256),
                 decoding: int = 4) -> list[dict[str, Any]]:
    """What the per-step token budget trades: `decoding` tasks write while a new task's prompt is
    prefilled; the longest gap between two tokens of the decoding tasks (their stall) against the
    new task's time to first token. `make(budget)` gives a batched backend with that budget."""
    rows = []
    for budget in budgets:
        backend = make(budget)
        scheduler = Scheduler(lambda name, b=backend: b)
        for i in range(decoding):
            scheduler.submit(TaskSubmission(i + 1, backend.spec.name, QUESTION.format(i=i), 400, time.time(),
                                            Sampling(), mode="async", tools=[t.to_dict() for t in tools],
                                            forced_text=STORY))
        last: dict[int, float] = {}
        while len(last) < decoding:  # every decoding task has begun writing
            for event in scheduler.step():
                if event.kind == "token":
                    last[event.task_id] = time.perf_counter()
        start = time.perf_counter()
        # Another system prompt: nothing to copy, the whole prompt is prefilled.
        scheduler.submit(TaskSubmission(99, backend.spec.name, "Summarise this: " + "the lamp " * 300, 4,
                                        time.time(), Sampling(), forced_text=STORY))
        stall, ttft = 0.0, None
        while ttft is None:
            for event in scheduler.step():
                now = time.perf_counter()
                if event.kind == "token" and event.task_id == 99:
                    ttft = (now - start) * 1000
                elif event.kind == "token":
                    stall = max(stall, now - last[event.task_id])
                    last[event.task_id] = now
        for task_id in [*range(1, decoding + 1), 99]:
            scheduler.cancel(task_id, "benchmark over")
        _drain(scheduler)
        rows.append({"step_tokens": budget, "decode_stall_ms": round(stall * 1000, 1),
                     "new_task_ttft_ms": round(ttft, 1)})
        del backend, scheduler
    return rows


def alone(before: LocalBackend, after: LocalBackend, tools: list[ToolSpec], tokens: int = 128,
          pairs: int = 8) -> dict[str, Any]:
    """One task on a context of its own against one task on the batched backend, `pairs` times,
    alternated (and which goes first swapped every pair): a single run of each, minutes apart or
    even back to back, differs by as much as the machine's drift (a batched x1 row of 0.93 of a
    context's rate in the same run that measured 1.006 over 20 alternated pairs). `ratio_p50`:
    the median of the pairs' batched / contexts ratios."""
    rates: dict[str, list[float]] = {"contexts": [], "batched": []}
    ratios = []
    for i in range(pairs):
        order = [("contexts", before), ("batched", after)]
        pair = {label: run_tasks(backend, 1, tokens, tools, False)["aggregate_tok_s"]
                for label, backend in (order if i % 2 == 0 else order[::-1])}
        for label, rate in pair.items():
            rates[label].append(rate)
        if pair["contexts"] and pair["batched"]:
            ratios.append(pair["batched"] / pair["contexts"])
    return {"pairs": pairs, "contexts_tok_s": rates["contexts"], "batched_tok_s": rates["batched"],
            "ratio_p50": round(statistics.median(ratios), 3) if ratios else None}


def _drain(scheduler: Scheduler) -> None:
    while scheduler.has_work():
        scheduler.step()


def concurrency(before: LocalBackend, after: LocalBackend, tools: list[ToolSpec], tokens: int = 128,
                ns: tuple[int, ...] = (1, 2, 4, 8), say: Callable[[str], None] = print,
                make_batched: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """`before`: a context per task; `after`: the batched backend. Each number of tasks N is a
    block of its own, a minute or two long: the ceiling at N, one task on a context of its own (the
    rate the ceiling's speedup multiplies), then N tasks on each backend. This machine's speed
    drifts by 10-20% over minutes, so a block's ratio (`of_ceiling`) uses only that block's
    numbers."""
    prompt = profile_for(before.spec).prompt_ids(before, QUESTION.format(i=0), tools, "async")
    out: dict[str, Any] = {"tokens_per_task": tokens, "prompt_tokens": len(prompt), "ceiling": {},
                           "contexts": {"runs": []}, "batched": {"runs": []}}
    for calls in (False, True):
        for n in ns:
            if not calls:
                block = ceiling(before, prompt, n, batched=after)
                out["ceiling"][str(n)] = {**block[str(n)], "one_ms": block["1"]["ms"],
                                          "one_ms_all": block["1"]["ms_all"],
                                          "one_ms_batched": block["1"].get("ms_batched")}
                say(f"  ceiling, {n} token(s) of one sequence against 1: {out['ceiling'][str(n)]}")
            rows = {}
            for label, backend in (("contexts", before), ("batched", after)):
                rows[label] = {"calls": calls, **run_tasks(backend, n, tokens, tools, calls)}
                out[label]["runs"].append(rows[label])
                say(f"  {label} {'with calls' if calls else 'plain'} x{n}: {rows[label]}")
            if not calls and n == 1:
                out["alone"] = alone(before, after, tools, tokens)
                say(f"  one task, batched against a context of its own, {out['alone']['pairs']} alternated pairs: "
                    f"{out['alone']['ratio_p50']} (median of the pairs' ratios)")
            if not calls:
                reference = rows["contexts"] if n == 1 else run_tasks(before, 1, tokens, tools, False)
                _of_ceiling(rows["batched"], reference["aggregate_tok_s"], out["ceiling"][str(n)])
                say(f"  batched x{n} of the ceiling: {rows['batched'].get('of_ceiling')} "
                    f"(every token's logits: {rows['batched'].get('of_ceiling_all')})")
    for label, backend in (("contexts", before), ("batched", after)):
        out[label]["prefix"] = shared_prefix_ttft(backend, tools)
        say(f"  {label} shared prefix: {out[label]['prefix']}")
    if make_batched is not None:
        out["budget_sweep"] = budget_sweep(make_batched, tools)
        say(f"  batched, per-step token budget (4 tasks decoding, a new prompt prefilled): {out['budget_sweep']}")
    return out


def _of_ceiling(row: dict[str, Any], one_tok_s: float | None, ceil: dict[str, Any]) -> None:
    """The machine's best for N sequences is one task's rate (through the same scheduler, so the
    engine's own work per token is in both) times the ceiling's speedup at N."""
    row["reference_tok_s"] = one_tok_s
    if row["aggregate_tok_s"] and one_tok_s:
        row["of_ceiling"] = round(row["aggregate_tok_s"] / (one_tok_s * ceil["speedup"]), 3)
        row["of_ceiling_all"] = round(row["aggregate_tok_s"] / (one_tok_s * ceil["speedup_all"]), 3)
