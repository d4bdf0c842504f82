"""What the model writes, whoever sampled it: a token's text, the CML it completes, the end of
its turn. The task's mode decides what a call, a trap and the end of the turn do."""

from __future__ import annotations

from collections.abc import Sequence

from engine.calltable import CallTable
from engine.cml import CallComplete, Malformed, Trap
from engine.interrupts import error_payload, queue
from engine.messages import TraceEvent
from engine.modes import MODES
from engine.state import FINAL, Status, TaskRun


def on_token(table: CallTable, run: TaskRun, token: int, piece: str) -> list[TraceEvent]:
    """A generated token: text, CML, budgets."""
    assert run.backend is not None
    if "\x00" in piece:
        piece = piece.replace("\x00", "\ufffd")  # no database stores a NUL; the token id stays exact
    now = run.clock()
    run.generated.append(token)
    if run.first_token_at is None:
        run.first_token_at = now
    run.last_token_at = now
    run.text.append(piece)
    run.tail = (run.tail + piece)[-32:]
    run.after_frame = False
    events = [run.event("token", {"i": len(run.generated), "id": token, "text": piece})]
    if run.tools:
        cml = run.monitor.feed(piece)
        events += on_cml(table, run, cml)
        if run.guard is not None:  # after on_cml: a call completed by this token holds its id
            run.forced.extend(run.guard.observe(piece, cml, run.calls))
    if run.status in FINAL:
        return events
    limit = min(run.sub.max_tokens, run.backend.n_ctx - run.context_len)
    if len(run.generated) >= run.sub.max_tokens or limit <= 0:
        return events + run.finish(Status.FINISHED, "", finish_reason="length")
    return events


def end_of_turn(table: CallTable, run: TaskRun) -> list[TraceEvent]:
    """The model wrote a stop token (not part of the context)."""
    events = on_cml(table, run, run.monitor.close()) if run.tools else []
    if run.status in FINAL:
        return events
    return events + MODES[run.mode].on_end_of_turn(table, run)


def on_cml(table: CallTable, run: TaskRun, items: Sequence[object]) -> list[TraceEvent]:
    mode = MODES[run.mode]
    events: list[TraceEvent] = []
    for item in items:
        if isinstance(item, CallComplete):
            call, decoded = table.register(run, item)
            events += decoded
            if call is not None:
                events += mode.on_call(table, run, call)
        elif isinstance(item, Trap):
            events += mode.on_trap(table, run)
        elif isinstance(item, Malformed):
            events.append(run.event("malformed", {"raw": item.raw[-500:], "reason": item.reason}))
            events += queue(run, "error", error_payload("malformed", item.reason))
    return events
