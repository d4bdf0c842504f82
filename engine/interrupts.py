"""Interrupts: results and people's messages waiting to enter a task's context.

A result becomes a payload (compact JSON, or a short structured error; truncated to the task's
limit) and joins the task's queue, which wakes the task if it was waiting for it. At the next
token boundary outside a critical section a driver takes the whole queue as one frame
(`take_frame`), puts its tokens into the context its own way (KV append or resubmission) and
records it (`injected`): one framing and one record for every backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.messages import TraceEvent
from engine.profiles import compact, profile_for
from engine.state import Call, Status, TaskRun


@dataclass(frozen=True)
class Frame:
    text: str
    ids: list[int]
    calls: list[str]  # the calls whose results it carries
    messages: list[str]  # people's messages


# A CML marker, however spaced or cased: text from outside (a tool's result, an error, a person's
# message) must not be able to close the frame it is in or open another.
_MARKER = re.compile(r"\[(\s*(?:CALL|HEAD|END|TRAP|INTR)\s*)\]", re.IGNORECASE)


def neutralise(text: str) -> str:
    """`[END]` becomes `(END)` and so on for every marker; text without markers is unchanged."""
    return _MARKER.sub(r"(\1)", text)


def error_payload(kind: str, message: str) -> str:
    """What the model sees for a failed call: short and structured, never a traceback."""
    return compact({"error": {"type": kind, "message": message[:500]}})


def result_payload(run: TaskRun, call: Call, ok: bool, value: Any, error: str, error_type: str,
                   recorded: str | None = None) -> list[TraceEvent]:
    """Record a call's outcome and queue exactly what the model will see (after truncation);
    `recorded`: what the model saw of it before (a resumed task), queued as it was."""
    payload = neutralise(compact(value) if ok else error_payload(error_type, error)) if recorded is None else recorded
    limit = run.sub.budgets.max_result_chars
    events: list[TraceEvent] = []
    if recorded is None and len(payload) > limit:
        events.append(run.event("truncated", {"call_id": call.call_id, "chars": len(payload), "limit": limit}))
        payload = payload[:limit] + f"…[truncated {len(payload) - limit} chars]"
    events.append(
        run.event(
            "call_result",
            {"call_id": call.call_id, "ok": ok, "error": error, "error_type": "" if ok else error_type,
             "injected": payload},
        )
    )
    return events + queue(run, call.call_id, payload)


def queue(run: TaskRun, call_id: str | None, payload: str) -> list[TraceEvent]:
    """Queue an interrupt; a parked task wakes, a blocked one once nothing it waits for is left."""
    run.interrupts.append((call_id, payload))
    events = []
    if call_id is not None:
        events.append(run.event("interrupt_queued", {"call_id": call_id, "critical": run.monitor.critical}))
        run.waiting_for.discard(call_id)
    if run.status is Status.PARKED or (run.status is Status.BLOCKED and not run.waiting_for):
        events.append(run.event("resumed", {"from": run.status.value}))
        run.status = Status.DECODING
    return events


def take_frame(run: TaskRun) -> Frame:
    """The queued interrupts as one frame, emptying the queue."""
    assert run.backend is not None
    batch, run.interrupts = run.interrupts, []
    profile = profile_for(run.backend.spec)
    results = [(cid, payload) for cid, payload in batch if cid is not None]
    messages = [payload for cid, payload in batch if cid is None]
    text = profile.frame_results(results) if results else ""
    if run.after_frame and text.startswith(" "):
        # Right after another frame, which ended with its blank: the two read as one frame would
        # (the form fine-tuning traces give results that arrive together), not with a double blank.
        text = text[1:]
    ids = run.backend.tokenize(text) if text else []
    for message in messages:
        framed, framed_ids = profile.frame_user_message(run.backend, neutralise(message))
        text, ids = text + framed, ids + framed_ids
    return Frame(text, ids, [cid for cid, _ in results], messages)


def no_room(run: TaskRun, frame: Frame, room: int) -> list[TraceEvent]:
    """The task's end when the frame does not fit in `room` tokens, else []."""
    if len(frame.ids) <= room:
        return []
    return run.finish(Status.FINISHED, "the context is full: no room for the results", finish_reason="context_full")


def injected(run: TaskRun, frame: Frame, *, position: int, began_ms: float, ms: float, **extra: Any) -> TraceEvent:
    """Account for a frame now in the context."""
    run.injected_tokens += len(frame.ids)
    run.injections += 1
    run.after_frame = bool(frame.calls) and not frame.messages
    run.text.append(frame.text)
    run.tail = (run.tail + frame.text)[-32:]
    return run.event(
        "interrupt_injected",
        {"calls": frame.calls, "messages": frame.messages, "began_ms": began_ms, "position": position,
         "tokens": len(frame.ids), "ms": round(ms, 2), "text": frame.text, **extra},
    )
