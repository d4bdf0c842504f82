"""The pure engine core: per-task state machine and round-robin interleaving.

No I/O here. `Scheduler.step()` does one unit of work (a prefill chunk or one decoded token) for
the next runnable task and returns the trace events it produced; the engine process stores and
publishes them. Time comes from injected clocks so tests are deterministic.
"""

from __future__ import annotations

import codecs
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.backends.base import Backend, Sequence
from engine.messages import TaskSubmission, TraceEvent
from engine.profiles import chat_prompt_ids
from engine.sampling import sample


class Status(enum.Enum):
    PREFILL = "prefill"
    DECODING = "decoding"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({Status.FINISHED, Status.FAILED, Status.CANCELLED})


@dataclass
class TaskRun:
    sub: TaskSubmission
    backend: Backend
    t0: float  # monotonic, when the engine took the task
    started_wall: float
    status: Status = Status.PREFILL
    seq: Sequence | None = None
    prompt_ids: list[int] = field(default_factory=list)
    prefilled: int = 0
    prefill_ms: float = 0.0
    generated: list[int] = field(default_factory=list)
    # Sampled but not yet evaluated into the KV cache: evaluating it starts the next step, so a
    # token's event leaves the engine before the ~40 ms decode of its successor.
    unevaluated: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    last_token_at: float | None = None
    next_seq: int = 1
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    @property
    def task_id(self) -> int:
        return self.sub.task_id


class Scheduler:
    def __init__(
        self,
        get_backend: Callable[[str], Backend],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        prefill_chunk: int = 128,
    ) -> None:
        self._get_backend = get_backend
        self._clock = clock
        self._wall = wall
        self._prefill_chunk = prefill_chunk
        self._runs: dict[int, TaskRun] = {}
        self._ready: deque[int] = deque()

    # -- queries ---------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._runs)

    def has_work(self) -> bool:
        return bool(self._ready)

    def run(self, task_id: int) -> TaskRun | None:
        return self._runs.get(task_id)

    # -- commands --------------------------------------------------------------------------
    def submit(self, sub: TaskSubmission) -> list[TraceEvent]:
        """Take a task; returns its first events (running, or failed with the reason)."""
        if sub.task_id in self._runs:
            return []
        now = self._clock()
        try:
            backend = self._get_backend(sub.model)
        except Exception as exc:  # unknown model, bad file hash, load failure: the task says why
            run = TaskRun(sub=sub, backend=None, t0=now, started_wall=self._wall())  # type: ignore[arg-type]
            self._runs[sub.task_id] = run
            return self._finish(run, Status.FAILED, f"model {sub.model!r} unavailable: {exc}")
        run = TaskRun(
            sub=sub, backend=backend, t0=now, started_wall=self._wall(),
            rng=np.random.default_rng(sub.sampling.seed),
        )
        self._runs[sub.task_id] = run
        # started_at (unix s) anchors t_ms, so other processes can place events on the wall clock.
        events = [self._event(run, "status", {"status": "running", "model": sub.model,
                                              "started_at": run.started_wall})]
        run.prompt_ids = chat_prompt_ids(backend, sub.prompt)
        needed = len(run.prompt_ids) + sub.max_tokens
        if len(run.prompt_ids) >= backend.n_ctx:
            events += self._finish(
                run, Status.FAILED,
                f"the prompt is {len(run.prompt_ids)} tokens, which does not fit the model's context "
                f"of {backend.n_ctx} tokens",
            )
            return events
        if needed > backend.n_ctx:
            # Keep the task useful: generate what fits and say so.
            events.append(self._event(run, "warning", {
                "message": f"max_tokens lowered to {backend.n_ctx - len(run.prompt_ids)} to fit the "
                f"context of {backend.n_ctx} tokens",
            }))
        run.seq = backend.open_sequence()
        self._ready.append(sub.task_id)
        return events

    def cancel(self, task_id: int, reason: str = "cancelled") -> list[TraceEvent]:
        run = self._runs.get(task_id)
        if run is None or run.status in FINAL:
            return []
        return self._finish(run, Status.CANCELLED, reason)

    def step(self) -> list[TraceEvent]:
        """One unit of work for the next runnable task, round-robin. [] when idle."""
        while self._ready:
            task_id = self._ready.popleft()
            run = self._runs.get(task_id)
            if run is None or run.status in FINAL:
                continue
            try:
                events = self._prefill(run) if run.status is Status.PREFILL else self._decode(run)
            except Exception as exc:  # a backend failure ends this task, never the engine
                return self._finish(run, Status.FAILED, f"backend error: {exc}")
            if run.status not in FINAL:
                self._ready.append(task_id)
            return events
        return []

    # -- work units ------------------------------------------------------------------------
    def _prefill(self, run: TaskRun) -> list[TraceEvent]:
        assert run.seq is not None
        start = self._clock()
        chunk = run.prompt_ids[run.prefilled : run.prefilled + self._prefill_chunk]
        run.seq.append(chunk)
        run.prefilled += len(chunk)
        run.prefill_ms += (self._clock() - start) * 1000
        if run.prefilled < len(run.prompt_ids):
            return []
        run.status = Status.DECODING
        return [self._event(run, "prefill", {
            "prompt_tokens": len(run.prompt_ids), "ms": round(run.prefill_ms, 2),
        })]

    def _decode(self, run: TaskRun) -> list[TraceEvent]:
        assert run.seq is not None
        if run.unevaluated:
            run.seq.append(run.unevaluated)
            run.unevaluated = []
        token = sample(run.seq.logits(), run.sub.sampling, run.rng)
        now = self._clock()
        if token in run.backend.stop_ids():
            return self._finish(run, Status.FINISHED, "", finish_reason="stop")
        run.generated.append(token)
        if run.first_token_at is None:
            run.first_token_at = now
        run.last_token_at = now
        piece = run.utf8.decode(run.backend.token_bytes(token))
        run.text.append(piece)
        events = [self._event(run, "token", {"i": len(run.generated), "id": token, "text": piece})]
        limit = min(run.sub.max_tokens, run.backend.n_ctx - len(run.prompt_ids))
        if len(run.generated) >= limit:
            return events + self._finish(run, Status.FINISHED, "", finish_reason="length")
        run.unevaluated = [token]
        return events

    # -- helpers ---------------------------------------------------------------------------
    def _event(self, run: TaskRun, kind: str, payload: dict) -> TraceEvent:
        event = TraceEvent(
            task_id=run.task_id, seq=run.next_seq,
            t_ms=round((self._clock() - run.t0) * 1000, 3), kind=kind, payload=payload,
        )
        run.next_seq += 1
        return event

    def metrics(self, run: TaskRun) -> dict:
        tokens = len(run.generated)
        latency_ms = (
            (run.last_token_at - run.first_token_at) * 1000
            if run.first_token_at is not None and run.last_token_at is not None else None
        )
        return {
            "queue_wait_ms": round(max(0.0, run.started_wall - run.sub.submitted_at) * 1000, 1),
            "prompt_tokens": len(run.prompt_ids),
            "prefill_ms": round(run.prefill_ms, 1),
            "ttft_ms": round((run.first_token_at - run.t0) * 1000, 1) if run.first_token_at else None,
            "tokens": tokens,
            "latency_ms": round(latency_ms, 1) if latency_ms is not None else None,
            # Decode rate between the first and last token (the first token's wait is the TTFT).
            "tokens_per_s": round((tokens - 1) / (latency_ms / 1000), 2)
            if latency_ms and tokens > 1 else None,
            "total_ms": round((self._clock() - run.t0) * 1000, 1),
        }

    def _finish(self, run: TaskRun, status: Status, reason: str, *, finish_reason: str = "") -> list[TraceEvent]:
        run.status = status
        tail = run.utf8.decode(b"", final=True)
        if tail:
            run.text.append(tail)
        if run.seq is not None:
            run.seq.close()
            run.seq = None
        payload = {
            "status": status.value,
            "reason": reason,
            "finish_reason": finish_reason or status.value,
            "text": "".join(run.text),
            "metrics": self.metrics(run),
        }
        event = self._event(run, "finish", payload)
        del self._runs[run.task_id]
        if run.task_id in self._ready:
            self._ready.remove(run.task_id)
        return [event]
