"""The trace's vocabulary and the one reducer that reads it.

Every event a task's trace holds has one of the `EventKind`s below (the engine writes all but
`call_started` and `call_finished`, which workers report through it). `Timeline` folds a task's
events, in order, into what the dashboard, the store, the benchmarks and the API show: each call's
times (decoded, dispatched, started and finished on a worker, result, injected), the model's lane
(prefill, decoding, injecting, parked, blocked) and the overlap between the two, the quantity
asynchronous calling exists for. `apply_call_event` is the per-call part, on anything with the
fields of `CallTimes` (a database row too).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol


class EventKind(enum.StrEnum):
    STATUS = "status"  # the task runs: model, mode, adapter, started_at (unix s)
    PREFILL = "prefill"  # the prompt is in: prompt_tokens, reused_tokens, ms
    TOKEN = "token"  # i, id, text
    WARNING = "warning"  # message
    CALL_DECODED = "call_decoded"  # call_id, name, args, position, depends_on
    CALL_ERROR = "call_error"  # a block that is not a valid call: call_id, name, error, raw
    CALL_WAITING = "call_waiting"  # call_id, on: the calls it waits for
    CALL_DISPATCHED = "call_dispatched"  # call_id, name, args (futures substituted); again: sent anew on resuming
    CALL_STARTED = "call_started"  # reported by a worker: call_id, worker, at_ms
    CALL_FINISHED = "call_finished"  # reported by a worker: call_id, worker, at_ms, ok
    CALL_RESULT = "call_result"  # call_id, ok, error, error_type, injected (what the model will see)
    TRUNCATED = "truncated"  # a result cut to the task's limit: call_id, chars, limit
    LATE_RESULT = "late_result"  # a result after the call was resolved: call_id, ok (dropped)
    INTERRUPT_QUEUED = "interrupt_queued"  # call_id, critical
    INTERRUPT_INJECTED = "interrupt_injected"  # calls, messages, began_ms, position, tokens, ms, text
    HUMAN_MESSAGE = "human_message"  # text, critical
    MALFORMED = "malformed"  # raw, reason
    BANNED_TOKEN = "banned_token"  # a server's token that began [INTR]: id, text
    TRAP = "trap"  # action: parked | noop; pending
    PARKED = "parked"  # reason, pending
    BLOCKED = "blocked"  # waiting_for, why
    RESUMED = "resumed"  # from: the status it left, or "engine" (rebuilt after its engine died: engine, replayed_*)
    RESUBMITTED = "resubmitted"  # a server request after an interrupt: rid, reason, cached_tokens, ...
    FINISH = "finish"  # status, reason, finish_reason, text, metrics, pending_calls


class CallRecord(Protocol):
    """What a call's record holds (`CallTimes` here, the ToolCall row in the web app)."""

    tool: str
    arguments: Any
    status: str
    worker: str
    decoded_ms: float | None
    dispatched_ms: float | None
    started_ms: float | None
    finished_ms: float | None
    injected_ms: float | None
    result: Any
    error: str


@dataclass
class CallTimes:
    call_id: str
    tool: str = ""
    arguments: Any = None
    status: str = "decoded"  # decoded | waiting | dispatched | running | done | error
    worker: str = ""
    decoded_ms: float | None = None
    dispatched_ms: float | None = None
    started_ms: float | None = None
    finished_ms: float | None = None
    injected_ms: float | None = None
    result: Any = None  # what the model saw (JSON where it parses)
    error: str = ""
    ok: bool | None = None


def call_ids(kind: str, payload: dict[str, Any]) -> list[str]:
    """The calls an event is about (none for other kinds)."""
    if kind == EventKind.INTERRUPT_INJECTED:
        return [c for c in payload.get("calls", []) if c != "error"]  # "error": a protocol error frame
    return [payload["call_id"]] if kind in CALL_KINDS else []


def apply_call_event(call: CallRecord, kind: str, t_ms: float, p: dict[str, Any]) -> None:
    if kind == EventKind.CALL_DECODED:
        call.tool, call.arguments, call.decoded_ms, call.status = p["name"], p["args"], t_ms, "decoded"
    elif kind == EventKind.CALL_ERROR:
        call.status, call.error = "error", p.get("error", "")
    elif kind == EventKind.CALL_WAITING:
        call.status = "waiting"
    elif kind == EventKind.CALL_DISPATCHED:
        call.status, call.arguments, call.dispatched_ms = "dispatched", p["args"], t_ms
    elif kind == EventKind.CALL_STARTED:
        call.worker, call.started_ms = p["worker"], p["at_ms"]
        if call.status == "dispatched":
            call.status = "running"
    elif kind == EventKind.CALL_FINISHED:
        call.worker, call.finished_ms = p["worker"], p["at_ms"]
    elif kind == EventKind.CALL_RESULT:
        call.status = "done" if p["ok"] else "error"
        call.error = p.get("error", "")
        call.result = _json_or_text(p.get("injected", ""))
    elif kind == EventKind.INTERRUPT_INJECTED:
        call.injected_ms = t_ms  # the frame is in the context (its evaluation began at began_ms)


CALL_KINDS = frozenset({
    EventKind.CALL_DECODED, EventKind.CALL_ERROR, EventKind.CALL_WAITING, EventKind.CALL_DISPATCHED,
    EventKind.CALL_STARTED, EventKind.CALL_FINISHED, EventKind.CALL_RESULT,
})


@dataclass
class Lane:
    state: str  # prefill | decoding | injecting | parked | blocked
    start: float
    end: float | None = None


@dataclass
class Timeline:
    calls: dict[str, CallTimes] = field(default_factory=dict)
    lanes: list[Lane] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)  # each token's time
    injected_tokens: int = 0
    finished_at: float | None = None
    last_t: float = 0.0

    @classmethod
    def of(cls, events: Iterable[Any]) -> Timeline:
        """From events with `kind`, `t_ms` and `payload` (engine messages or database rows)."""
        timeline = cls()
        for e in events:
            timeline.apply(e.kind, e.t_ms, e.payload)
        return timeline

    def apply(self, kind: str, t_ms: float, p: dict[str, Any]) -> None:
        self.last_t = max(self.last_t, t_ms)
        for call_id in call_ids(kind, p):
            call = self.calls.setdefault(call_id, CallTimes(call_id))
            apply_call_event(call, kind, t_ms, p)
        if kind == EventKind.STATUS:
            self._enter("prefill", t_ms)
        elif kind in (EventKind.PREFILL, EventKind.RESUMED) or (kind == EventKind.TOKEN and not self._in("decoding")):
            self._enter("decoding", t_ms)
        elif kind == EventKind.PARKED or (kind == EventKind.TRAP and p.get("action") == "parked"):
            self._enter("parked", t_ms)
        elif kind == EventKind.BLOCKED:
            self._enter("blocked", t_ms)
        elif kind == EventKind.INTERRUPT_INJECTED:
            start = p.get("began_ms", t_ms)
            self.injected_tokens += p.get("tokens", 0)
            self._enter("injecting", start)
            self._enter("decoding", start + (p.get("ms") or 0.0))
        elif kind == EventKind.FINISH:
            self.finished_at = t_ms
            self._enter(None, t_ms)
        if kind == EventKind.TOKEN:
            self.tokens.append(t_ms)

    def overlap_ms(self, now: float | None = None) -> float:
        """Time the model was decoding (or injecting) while at least one call ran on a worker."""
        end = self.finished_at if self.finished_at is not None else max(self.last_t, now or 0.0)
        busy = [(lane.start, end if lane.end is None else lane.end) for lane in self.lanes
                if lane.state in ("decoding", "injecting")]
        running = _union([(c.started_ms, end if c.finished_ms is None else c.finished_ms)
                          for c in self.calls.values() if c.started_ms is not None])
        total = sum(max(0.0, min(b1, r1) - max(b0, r0)) for b0, b1 in busy for r0, r1 in running)
        return round(total, 1)

    def _in(self, state: str) -> bool:
        return bool(self.lanes) and self.lanes[-1].end is None and self.lanes[-1].state == state

    def _enter(self, state: str | None, t_ms: float) -> None:
        if state is not None and self._in(state):
            return
        if self.lanes and self.lanes[-1].end is None:
            self.lanes[-1].end = t_ms
        if state is not None:
            self.lanes.append(Lane(state, t_ms))


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _json_or_text(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text  # truncated results are no longer valid JSON
