"""The pure engine core's front: admission, round-robin stepping and the public commands.

No I/O here. `step()` does one unit of work for the next runnable task (engine/drivers: a
prefill chunk, an interrupt frame or a token on a local backend; a poll of the stream on a
remote one) and returns the trace events it produced. Calls to run are collected in an outbox
(`take_dispatches`); results come back through `deliver`. A task that is parked on [TRAP] or
waiting in sync mode is not runnable, so it costs no decode steps. Time comes from injected
clocks so tests are deterministic.

Where the rest lives: a task's state (engine/state.py), what its model writes
(engine/output.py), the modes (engine/modes.py), the call table (engine/calltable.py), the
interrupt queue and framing (engine/interrupts.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.backends.base import Backend, BackendError, LocalBackend
from engine.calltable import CallTable
from engine.constrain import call_guard
from engine.drivers.chunks import ChunkSizer
from engine.drivers.local import LocalDriver
from engine.drivers.remote import RemoteDriver
from engine.interrupts import queue
from engine.messages import CallReport, CallRequest, TaskSubmission, TraceEvent
from engine.profiles import profile_for
from engine.replayer import Replayer
from engine.resume import History, Replay, ResumeError
from engine.state import FINAL, RESOLVED, RUNNABLE, Status, TaskRun
from engine.tools import ToolSpec


class Scheduler:
    def __init__(
        self,
        get_backend: Callable[[str], Backend],
        *,
        engine_id: str = "engine",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        chunks: ChunkSizer | None = None,
    ) -> None:
        self._get_backend = get_backend
        self.engine_id = engine_id
        self._clock = clock
        self._wall = wall
        self._runs: dict[int, TaskRun] = {}
        self._ready: deque[int] = deque()
        self.calls = CallTable(engine_id, clock, wall)
        self.local = LocalDriver(self.calls, chunks or ChunkSizer())
        self.remote = RemoteDriver(self.calls)
        self.replayer = Replayer(self.calls, self.local)
        self.worked = False  # the last step did a unit of work (a prefill chunk has no events)

    # -- queries ---------------------------------------------------------------------------
    @property
    def active(self) -> int:
        """Tasks this engine holds (a context each), waiting ones included."""
        return len(self._runs)

    @property
    def busy(self) -> int:
        """Tasks that take decode steps: a task parked on [TRAP] or blocked in sync mode does not,
        so it must not hold a slot that the task it waits for (a sub-agent) may need."""
        return sum(1 for run in self._runs.values() if run.status not in (Status.PARKED, Status.BLOCKED))

    def has_work(self) -> bool:
        return bool(self._ready or self.remote.draining)

    def idle_s(self) -> float | None:
        """When no runnable task can step now: seconds until the first busy one can (None: no
        runnable task is waiting on its sequence)."""
        waits = [self.local.busy_s(run) for tid in self._ready
                 if (run := self._runs.get(tid)) is not None and run.status in RUNNABLE
                 and isinstance(run.backend, LocalBackend)]
        return min(waits) if waits else None

    def task(self, task_id: int) -> TaskRun | None:
        return self._runs.get(task_id)

    def take_dispatches(self) -> list[CallRequest]:
        return self.calls.take_dispatches()

    # -- commands --------------------------------------------------------------------------
    def submit(self, sub: TaskSubmission) -> list[TraceEvent]:
        """Take a task; returns its first events (running, or failed with the reason)."""
        if sub.task_id in self._runs:
            return []
        now = self._clock()
        try:
            backend = self._get_backend(sub.model)
        except Exception as exc:  # unknown model, bad file hash, load failure: the task says why
            failed = TaskRun(sub=sub, backend=None, clock=self._clock, t0=now, started_wall=self._wall())
            return failed.finish(Status.FAILED, f"model {sub.model!r} unavailable: {exc}")
        run = self._new_run(sub, backend, now, self._wall())
        # started_at (unix s) anchors t_ms, so other processes can place events on the wall clock.
        events = [run.event("status", {"status": "running", "model": sub.model, "mode": sub.mode,
                                       "started_at": run.started_wall, "adapter": backend.spec.adapter_ref()})]
        events += self._prepare(run)
        if run.status in FINAL:
            return events
        self._admit(run)
        return events

    def resume(self, sub: TaskSubmission, history: History, late: dict[str, CallReport] | None = None) -> None:
        """Take over a task a dead engine was running: its context is rebuilt from `history`
        (engine/resume.py), then it goes on; its events continue the recorded ones. `late`: results
        that reached the dead engine but not the record. ResumeError when that cannot be done."""
        if sub.task_id in self._runs:
            return
        try:
            backend = self._get_backend(sub.model)
        except Exception as exc:
            raise ResumeError(f"model {sub.model!r} unavailable: {exc}") from None
        if not isinstance(backend, LocalBackend):
            raise ResumeError("only tasks on a local backend can be resumed (a server's context is not replayed)")
        # Its clock goes on from the recorded start, so times and the wall budget continue too.
        now = self._clock() - max(0.0, self._wall() - history.started_wall)
        run = self._new_run(sub, backend, now, history.started_wall)
        self._prepare(run)
        if run.status in FINAL:
            raise ResumeError("its prompt no longer fits the model")
        if not backend.stable_token_ids:
            history.tokens = [_one_token(backend, text) for text in history.texts]
        run.next_seq = history.last_seq + 1
        run.replay = Replay(history, late or {})
        self._admit(run)

    def _new_run(self, sub: TaskSubmission, backend: Backend, t0: float, started_wall: float) -> TaskRun:
        run = TaskRun(sub=sub, backend=backend, clock=self._clock, t0=t0, started_wall=started_wall,
                      rng=np.random.default_rng(sub.sampling.seed))
        run.tools = {t["name"]: ToolSpec.from_dict(t) for t in sub.tools}
        run.guard = None if sub.forced_text else call_guard(backend, run.tools)
        return run

    def _admit(self, run: TaskRun) -> None:
        self._driver(run).open(run)
        self._runs[run.task_id] = run
        self._ready.append(run.task_id)

    def cancel(self, task_id: int, reason: str = "cancelled") -> list[TraceEvent]:
        run = self._runs.get(task_id)
        if run is None or run.status in FINAL:
            return []
        return self._reaped(run.finish(Status.CANCELLED, reason))

    def human_message(self, task_id: int, text: str) -> list[TraceEvent]:
        """A person's message for a running task: injected like a result, at the next token
        boundary outside a critical section; it wakes a parked task."""
        run = self._runs.get(task_id)
        if run is None or run.status in FINAL:
            return []
        events = [run.event("human_message", {"text": text, "critical": run.monitor.critical})]
        return self._woken(run, events + queue(run, None, text))

    def deliver(
        self, task_id: int, call_id: str, *, ok: bool, value: Any = None, error: str = "", error_type: str = "error"
    ) -> list[TraceEvent]:
        """A call's result or error arrived. Exactly one interrupt per call: repeats are dropped."""
        run = self._runs.get(task_id)
        if run is None:
            return []
        call = run.calls.get(call_id)
        if call is None or call.status in RESOLVED:
            return [run.event("late_result", {"call_id": call_id, "ok": ok})]
        return self._woken(run, self.calls.resolve(run, call, ok, value, error, error_type))

    def expire(self) -> list[TraceEvent]:
        """Time out calls past their deadline and tasks past their wall-time budget."""
        now = self._clock()
        events: list[TraceEvent] = []
        for run in list(self._runs.values()):
            if now - run.t0 > run.sub.budgets.max_wall_s:
                events += run.finish(
                    Status.FINISHED, f"wall-time budget of {run.sub.budgets.max_wall_s:g} s exhausted",
                    finish_reason="time_limit",
                )
            else:
                events += self._woken(run, self.calls.expire(run, now))
        return self._reaped(events)

    def step(self) -> list[TraceEvent]:
        """One unit of work for the next runnable task, round-robin. [] when idle (`worked` then
        says whether a unit without events, such as a prefill chunk, was done)."""
        tried = 0
        self.worked = False
        drained = self._reaped(self.remote.drain(self._runs))
        for waiting in [r for r in self._runs.values() if r.replay is not None and r.status not in RUNNABLE]:
            self.replayer.frame(waiting)  # a parked or blocked replay wakes on its recorded frame
            self._woken(waiting, [])
        while self._ready:
            run = self._runs.get(self._ready.popleft())
            if run is None or run.status not in RUNNABLE:
                continue
            if run.replay is not None:
                self.worked = True
                events = self.replayer.step(run)
                if run.status in RUNNABLE and run.task_id not in self._ready:
                    self._ready.append(run.task_id)
                return drained + self._reaped(events)
            driver = self._driver(run)
            if driver is self.local and self.local.busy_s(run) > 0:
                self._ready.append(run.task_id)  # its sequence is still busy: the others go first
                tried += 1
                if tried >= len(self._ready):
                    # Every runnable task has queued its work: a batching backend evaluates it now.
                    self.worked = self.local.flush()
                    return drained
                continue
            try:
                events = driver.step(run)
            except Exception as exc:  # a backend failure ends this task, never the engine
                return self._reaped(run.finish(Status.FAILED, f"backend error: {exc}"))
            if run.status in RUNNABLE:
                self._ready.append(run.task_id)
            if events or driver.silent_steps_work:
                self.worked = True
                return self._reaped(events)
            tried += 1
            if tried >= len(self._ready):
                return drained  # only remote tasks waiting for their servers
        return drained

    # -- event numbering for other processes ------------------------------------------------
    def t_ms(self, task_id: int, wall: float) -> float:
        run = self._runs.get(task_id)
        return round((wall - run.started_wall) * 1000, 3) if run else 0.0

    def event(self, task_id: int, kind: str, payload: dict[str, Any]) -> TraceEvent | None:
        """An event reported by another process (a worker), numbered in this task's sequence."""
        run = self._runs.get(task_id)
        return run.event(kind, payload) if run else None

    # -- helpers ---------------------------------------------------------------------------
    def _driver(self, run: TaskRun) -> LocalDriver | RemoteDriver:
        return self.local if isinstance(run.backend, LocalBackend) else self.remote

    def _prepare(self, run: TaskRun) -> list[TraceEvent]:
        """The prompt's tokens and the checks that it fits; the task's end if it cannot run."""
        backend, sub = run.backend, run.sub
        assert backend is not None
        if sub.forced_text and not isinstance(backend, LocalBackend):
            # A server samples its own tokens: a script would be ignored, and the run would be
            # labelled forced all the same. Refused before its prompt goes to the server's tokenizer.
            return run.finish(Status.FAILED, f"a scripted task needs a local model; {backend.spec.name} "
                                             "is served by a server that samples its own tokens")
        try:
            profile = profile_for(backend.spec)
            run.prompt_ids = profile.prompt_ids(backend, sub.prompt, list(run.tools.values()), sub.mode,
                                                conversation=sub.conversation)
            if sub.forced_text:
                run.forced = deque(backend.tokenize(sub.forced_text) + sorted(backend.stop_ids())[:1])
        except BackendError as exc:  # a remote tokenizer that does not answer
            return run.finish(Status.FAILED, str(exc))
        n_ctx = backend.n_ctx
        if len(run.prompt_ids) >= n_ctx:
            return run.finish(
                Status.FAILED,
                f"the prompt is {len(run.prompt_ids)} tokens, which does not fit the model's context of {n_ctx} tokens",
            )
        if len(run.prompt_ids) + sub.max_tokens > n_ctx:
            message = f"max_tokens lowered to {n_ctx - len(run.prompt_ids)} to fit the context of {n_ctx} tokens"
            return [run.event("warning", {"message": message})]
        return []

    def _woken(self, run: TaskRun, events: list[TraceEvent]) -> list[TraceEvent]:
        """A command may have woken the task (a result, a message): make it runnable again."""
        if run.status in RUNNABLE and run.task_id not in self._ready:
            self._ready.append(run.task_id)
        return self._reaped(events)

    def _reaped(self, events: list[TraceEvent]) -> list[TraceEvent]:
        """Forget tasks that have ended (their final event is among `events`)."""
        for event in events:
            if event.kind == "finish":
                self._runs.pop(event.task_id, None)
                if event.task_id in self._ready:
                    self._ready.remove(event.task_id)
        return events


def _one_token(backend: Backend, text: str) -> int:
    ids = backend.tokenize(text)
    if len(ids) != 1:
        raise ResumeError(f"a recorded token's text {text!r} is not one token of {backend.spec.name}")
    return ids[0]
