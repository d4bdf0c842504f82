"""A task's state inside the engine: its status, its calls, what it has decoded and injected.

Plain data plus the two things every part of the core does to a task: number an event in its
trace (`TaskRun.event`) and end it (`TaskRun.finish`). The scheduler removes finished tasks.
"""

from __future__ import annotations

import codecs
import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.backends.base import Backend, RemoteSequence, Sequence
from engine.cml import Monitor
from engine.constrain import CallGuard
from engine.messages import TaskSubmission, TraceEvent
from engine.metrics import task_metrics
from engine.timeline import Timeline
from engine.tools import ToolSpec

if TYPE_CHECKING:
    from engine.interrupts import Frame
    from engine.resume import Replay


class Status(enum.Enum):
    PREFILL = "prefill"
    DECODING = "decoding"
    PARKED = "parked"  # [TRAP] or end of sequence with calls pending (async)
    BLOCKED = "blocked"  # sync / sync_parallel: waiting for specific results
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({Status.FINISHED, Status.FAILED, Status.CANCELLED})
RUNNABLE = frozenset({Status.PREFILL, Status.DECODING})


class CallStatus(enum.Enum):
    WAITING_DEPS = "waiting_deps"  # a future argument's call has not finished
    HELD = "held"  # sync_parallel: collected, not yet dispatched
    DISPATCHED = "dispatched"
    DONE = "done"
    ERROR = "error"


RESOLVED = frozenset({CallStatus.DONE, CallStatus.ERROR})


@dataclass
class Call:
    call_id: str
    tool: ToolSpec
    args: dict[str, Any]
    deps: set[str]
    position: int  # context position (tokens) where its [END] was decoded
    status: CallStatus = CallStatus.DISPATCHED
    deadline: float | None = None
    value: Any = None
    order: int = 0  # index among the task's calls, in the model's order
    after: set[str] = field(default_factory=set)  # earlier call on the same stateful instance


@dataclass
class RemoteState:
    """What only a task on a remote server (which samples itself) needs: tokens held while they
    may begin an [INTR] spelling, token ids banned after they tried to (an [INTR] for good, a
    [TRAP] while nothing is pending), the context length to cut
    back to when the rest of a request must not count, whether we asked for the running request's
    abort, and the prefix-cache figures of its resubmissions."""

    held: list[tuple[int, str]] = field(default_factory=list)
    banned_ids: set[int] = field(default_factory=set)
    trap_banned_ids: set[int] = field(default_factory=set)  # applied only while no call is pending
    keep_tokens: int | None = None
    abort_asked: bool = False
    reported_submissions: int = 0
    cache_expected: int = 0
    cache_hit: int = 0


@dataclass
class Injecting:
    """A frame going into a local context one chunk per step, so that no step is long (a frame
    of several large results is thousands of tokens) and other tasks decode in between."""

    frame: Frame
    position: int  # where the frame starts in the context
    began_ms: float
    left: list[int]  # its tokens not appended yet
    ms: float = 0.0  # time spent appending so far
    work_at: float | None = None  # the sequence's `work_s()` when the frame began (batching backends)


@dataclass
class TaskRun:
    sub: TaskSubmission
    backend: Backend | None  # None: the model could not be loaded (the task fails at once)
    clock: Callable[[], float]  # monotonic seconds, the scheduler's
    t0: float  # monotonic, when the engine took the task
    started_wall: float
    status: Status = Status.PREFILL
    seq: Sequence | RemoteSequence | None = None
    prompt_ids: list[int] = field(default_factory=list)
    prefilled: int = 0
    reused_tokens: int = 0  # prompt prefix found in a reused KV cache
    prefill_ms: float = 0.0
    generated: list[int] = field(default_factory=list)
    # Sampled but not yet evaluated into the KV cache: evaluating it starts the next step, so a
    # token's event leaves the engine before the ~40 ms decode of its successor (a sequence that
    # `defers_work` takes the token at once instead).
    unevaluated: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # generated and injected text, in context order
    tail: str = ""  # the last characters of the context's text, for the [INTR] ban
    after_frame: bool = False  # the context ends with an injected frame (no token written since)
    first_token_at: float | None = None
    last_token_at: float | None = None
    next_seq: int = 1
    tools: dict[str, ToolSpec] = field(default_factory=dict)
    monitor: Monitor = field(default_factory=Monitor)
    calls: dict[str, Call] = field(default_factory=dict)
    last_on_instance: dict[str, str] = field(default_factory=dict)  # instance -> its latest call id
    # To inject: (call id, payload) for a call's result, (None, text) for a person's message.
    interrupts: list[tuple[str | None, str]] = field(default_factory=list)
    waiting_for: set[str] = field(default_factory=set)  # BLOCKED until these calls resolve
    forced: deque[int] = field(default_factory=deque)
    guard: CallGuard | None = None  # constrained call blocks (engine/constrain.py), local backends only
    injected_tokens: int = 0
    injections: int = 0
    injecting: Injecting | None = None  # a frame going in over several steps
    replay: Replay | None = None  # being rebuilt from a dead engine's record (engine/resume.py)
    remote: RemoteState = field(default_factory=RemoteState)
    shared_batches: bool = False  # decoded in batches with other tasks (known once its sequence closes)
    timeline: Timeline = field(default_factory=Timeline)  # every event, reduced (overlap in the metrics)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    @property
    def task_id(self) -> int:
        return self.sub.task_id

    @property
    def mode(self) -> str:
        return self.sub.mode

    @property
    def context_len(self) -> int:
        return len(self.prompt_ids) + self.injected_tokens + len(self.generated)

    @property
    def ms(self) -> float:
        """Milliseconds since the engine took the task: every event's time base."""
        return round((self.clock() - self.t0) * 1000, 3)

    def pending(self) -> list[Call]:
        return [c for c in self.calls.values() if c.status not in RESOLVED]

    def event(self, kind: str, payload: dict[str, Any]) -> TraceEvent:
        event = TraceEvent(task_id=self.task_id, seq=self.next_seq, t_ms=self.ms, kind=kind, payload=payload)
        self.next_seq += 1
        self.timeline.apply(kind, event.t_ms, payload)
        return event

    def wait(self, status: Status, calls: set[str] | None = None) -> None:
        """Stop decoding until a result (PARKED: any; BLOCKED: all of `calls`) is queued."""
        self.status = status
        self.waiting_for = set(calls or ())

    def finish(self, status: Status, reason: str, *, finish_reason: str = "") -> list[TraceEvent]:
        self.status = status
        tail = self.utf8.decode(b"", final=True)
        if tail:
            self.text.append(tail)
        if self.seq is not None:
            self.shared_batches = isinstance(self.seq, Sequence) and self.seq.batched_with_others
            self.seq.close()
            self.seq = None
        return [
            self.event(
                "finish",
                {
                    "status": status.value,
                    "reason": reason,
                    "finish_reason": finish_reason or status.value,
                    "text": "".join(self.text),
                    "metrics": task_metrics(self),
                    "pending_calls": sorted(c.call_id for c in self.pending()),
                },
            )
        ]
