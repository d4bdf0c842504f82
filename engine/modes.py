"""How each mode reacts to what the model writes: a completed call, a [TRAP], the end of its turn.

- sync: at each [END] stop until that call's result is injected;
- sync_parallel: collect calls until [TRAP] or the end of the turn, run them together, inject
  all results in one go;
- async: dispatch at [END], keep decoding, inject results at the next token boundary outside a
  critical section, park on [TRAP] while calls are pending.

A fourth mode is one more class here and one more entry in MODES.
"""

from __future__ import annotations

from engine.calltable import CallTable
from engine.messages import TraceEvent
from engine.state import RESOLVED, Call, CallStatus, Status, TaskRun


class Mode:
    name = ""

    def on_call(self, table: CallTable, run: TaskRun, call: Call) -> list[TraceEvent]:
        return table.dispatch_or_wait(run, call)

    def on_trap(self, table: CallTable, run: TaskRun) -> list[TraceEvent]:
        return [run.event("trap", {"action": "noop"})]

    def instead_of_end(self, run: TaskRun) -> str:
        """Text the engine writes for the model instead of its stop token ("": the turn may end).
        Only where the engine samples (local backends); a server's stop token ends its request."""
        return ""

    def on_end_of_turn(self, table: CallTable, run: TaskRun) -> list[TraceEvent]:
        if run.interrupts:
            return []  # injected at the next step, then decoding goes on
        if not run.pending():
            return run.finish(Status.FINISHED, "", finish_reason="stop")
        # The model must see every result: wait for them, then continue the turn.
        pending = sorted(c.call_id for c in run.pending())
        self.wait_for_all(run)
        return [run.event("parked", {"reason": "end_of_sequence", "pending": pending})]

    def wait_for_all(self, run: TaskRun) -> None:
        run.wait(Status.BLOCKED, {c.call_id for c in run.pending()})


class Sync(Mode):
    name = "sync"

    def on_call(self, table: CallTable, run: TaskRun, call: Call) -> list[TraceEvent]:
        events = table.dispatch_or_wait(run, call)
        if call.status is not CallStatus.ERROR:
            run.wait(Status.BLOCKED, {call.call_id})
            events.append(run.event("blocked", {"waiting_for": [call.call_id]}))
        return events


class SyncParallel(Mode):
    name = "sync_parallel"

    def on_call(self, table: CallTable, run: TaskRun, call: Call) -> list[TraceEvent]:
        call.status = CallStatus.HELD
        return []

    def on_trap(self, table: CallTable, run: TaskRun) -> list[TraceEvent]:
        if _held(run):
            return _release(table, run, "trap")
        return super().on_trap(table, run)

    def on_end_of_turn(self, table: CallTable, run: TaskRun) -> list[TraceEvent]:
        if _held(run):
            return _release(table, run, "end_of_turn")
        return super().on_end_of_turn(table, run)


class Async(Mode):
    name = "async"

    def on_trap(self, table: CallTable, run: TaskRun) -> list[TraceEvent]:
        if run.pending() and not run.interrupts:
            run.wait(Status.PARKED)
            return [run.event("trap", {"action": "parked", "pending": sorted(c.call_id for c in run.pending())})]
        return super().on_trap(table, run)

    def instead_of_end(self, run: TaskRun) -> str:
        # Results are on their way: the turn cannot end before the model has seen them. A model
        # that ends it anyway and is woken by the results reads them as a new turn and repeats
        # its calls; so the engine writes the wait the protocol asks for, and the context reads as
        # it would have had the model written it (the form the tuned model was trained on).
        if run.interrupts or not run.pending() or run.monitor.in_block or run.sub.forced_text:
            return ""
        return ("" if run.tail[-1:].isspace() else " ") + "[TRAP][END]"

    def wait_for_all(self, run: TaskRun) -> None:
        run.wait(Status.PARKED)  # any result wakes it (the server's stop token cannot be banned)


MODES: dict[str, Mode] = {mode.name: mode for mode in (Sync(), SyncParallel(), Async())}


def _held(run: TaskRun) -> list[Call]:
    return [c for c in run.calls.values() if c.status is CallStatus.HELD]


def _release(table: CallTable, run: TaskRun, why: str) -> list[TraceEvent]:
    batch = _held(run)
    events: list[TraceEvent] = []
    for call in batch:
        events += table.dispatch_or_wait(run, call)
    waiting = {c.call_id for c in batch if c.status not in RESOLVED}
    if waiting:
        run.wait(Status.BLOCKED, waiting)
        events.append(run.event("blocked", {"waiting_for": sorted(waiting), "why": why}))
    return events
