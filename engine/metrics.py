"""A task's figures, stored with its final event: prompt and prefill, time to first token,
decode rate, calls and injections, and for remote servers how much of each resubmission their
prefix cache already held."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.state import TaskRun


def task_metrics(run: TaskRun) -> dict[str, Any]:
    tokens = len(run.generated)
    latency_ms = (
        (run.last_token_at - run.first_token_at) * 1000
        if run.first_token_at is not None and run.last_token_at is not None
        else None
    )
    return {
        "queue_wait_ms": round(max(0.0, run.started_wall - run.sub.submitted_at) * 1000, 1),
        "prompt_tokens": len(run.prompt_ids),
        "prefill_ms": round(run.prefill_ms, 1),
        "reused_prompt_tokens": run.reused_tokens,
        "ttft_ms": round((run.first_token_at - run.t0) * 1000, 1) if run.first_token_at else None,
        "tokens": tokens,
        "latency_ms": round(latency_ms, 1) if latency_ms is not None else None,
        # Decode rate between the first and last token (the first token's wait is the TTFT).
        "tokens_per_s": round((tokens - 1) / (latency_ms / 1000), 2) if latency_ms and tokens > 1 else None,
        "total_ms": round((run.clock() - run.t0) * 1000, 1),
        "calls": len(run.calls),
        "injections": run.injections,
        "injected_tokens": run.injected_tokens,
        # Decoding while at least one call ran on a worker: what calling asynchronously buys.
        "overlap_ms": run.timeline.overlap_ms(now=run.ms),
        # False (and why): a rerun of the same task may write other text.
        **reproducibility(run),
        **_remote_metrics(run),
    }


UNSEEDED = "the SGLang server ignores seeds at temperature > 0 (it runs without deterministic inference)"
BATCHED = ("it was decoded in batches with other tasks, and llama.cpp's numbers depend slightly on a batch's "
           "shape (ASYNCLM_EMBEDDED_BATCHED=false decodes each task alone)")


def reproducibility(run: TaskRun) -> dict[str, Any]:
    if run.backend is not None and not run.backend.reproducible(run.sub.sampling.temperature):
        return {"reproducible": False, "not_reproducible_because": UNSEEDED}
    if run.shared_batches:
        return {"reproducible": False, "not_reproducible_because": BATCHED}
    return {"reproducible": True}


def _remote_metrics(run: TaskRun) -> dict[str, Any]:
    remote = run.remote
    if not remote.cache_expected:
        return {}
    return {
        "resubmissions": remote.reported_submissions - 1,
        "cached_tokens": remote.cache_hit,
        "cache_hit_ratio": round(remote.cache_hit / remote.cache_expected, 4),
    }
