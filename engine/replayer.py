"""Stepping a task that is being rebuilt from a dead engine's record (engine/resume.py).

While `run.replay` is set, each step feeds the next recorded token in place of a sample (the
local driver does that) or queues the recorded frame due at this point, in its recorded order.
The events these steps produce are in the record already: they are dropped and take no
sequence numbers, except the task's end should the replay fail. When the record is used up, a
`resumed` event continues the numbering and the calls the replay met are settled once.
"""

from __future__ import annotations

from dataclasses import replace

from engine.calltable import CallTable
from engine.drivers.local import LocalDriver
from engine.interrupts import queue
from engine.messages import TraceEvent
from engine.resume import Outcome, ResumeError
from engine.state import RESOLVED, RUNNABLE, Call, Status, TaskRun


class Replayer:
    def __init__(self, table: CallTable, driver: LocalDriver) -> None:
        self._table = table
        self._driver = driver

    def step(self, run: TaskRun) -> list[TraceEvent]:
        """One step of a task being rebuilt; its end if the replay failed, the `resumed` event
        (and what settling its calls produced) when the record is used up, else []."""
        saved = run.next_seq
        try:
            self.frame(run)
            events = self._driver.step(run) if run.status in RUNNABLE else []
        except Exception as exc:  # noqa: BLE001 - a replay that fails ends this task, never the engine
            run.next_seq = saved
            return run.finish(Status.FAILED, f"could not resume the task: {exc}")
        run.next_seq = saved
        ends = [replace(e, seq=saved) for e in events if e.kind == "finish"]
        if ends:
            run.next_seq = saved + 1
            return ends
        assert run.replay is not None
        if run.replay.done and not run.interrupts and run.injecting is None and run.status is not Status.PREFILL:
            return self.end(run)
        return []

    def frame(self, run: TaskRun) -> None:
        """Queue the recorded frame due at this point, in its recorded order (which wakes the task)."""
        replay = run.replay
        assert replay is not None
        frame = replay.due_frame(len(run.generated))
        if frame is None or run.status is Status.PREFILL or run.injecting is not None:
            return
        saved = run.next_seq
        queued = {cid: payload for cid, payload in run.interrupts if cid is not None}  # the engine's own
        for cid in frame.calls:
            call = run.calls.get(cid)
            if cid not in queued and call is not None and call.status not in RESOLVED:
                outcome = replay.history.outcomes.get(cid)
                if outcome is None:
                    raise ResumeError(f"a recorded frame carries {cid}, whose result is not in the record")
                self._settle(run, call, outcome)
                queued[cid] = outcome.payload
            if cid not in queued:
                raise ResumeError(f"a recorded frame carries {cid}, which the replay does not know")
        run.interrupts = []
        for cid in frame.calls:
            queue(run, cid, queued[cid])
            replay.injected.add(cid)
        for message in frame.messages:
            queue(run, None, message)
        replay.next_frame += 1
        run.next_seq = saved

    def end(self, run: TaskRun) -> list[TraceEvent]:
        """The context is rebuilt: say so, then settle each call the replay held back, once."""
        replay = run.replay
        assert replay is not None
        run.replay = None
        history = replay.history
        payload = {"from": "engine", "engine": history.engine, "replayed_tokens": len(history.tokens),
                   "replayed_frames": len(history.frames)}
        events = [run.event("resumed", payload)]
        for request in replay.held:
            call = run.calls.get(request.call_id)
            if call is None or call.status in RESOLVED:
                continue
            outcome = history.outcomes.get(request.call_id)
            late = replay.late.get(request.call_id)
            if outcome is not None:  # recorded, not injected before the engine died
                self._settle(run, call, outcome)
            elif late is not None:
                events += self._table.resolve(run, call, late.ok, late.result, late.error, late.error_type or "error")
            else:
                self._table.send(request)
                events.append(run.event("call_dispatched", {"call_id": call.call_id, "name": call.tool.name,
                                                            "args": request.args, "again": True}))
        return events

    def _settle(self, run: TaskRun, call: Call, outcome: Outcome) -> None:
        """Resolve a call with its recorded outcome, queued as the model saw it; its events are in
        the record already, so they take no sequence numbers."""
        saved = run.next_seq
        self._table.resolve(run, call, outcome.ok, outcome.value, outcome.error, outcome.error_type,
                            recorded=outcome.payload)
        run.next_seq = saved
