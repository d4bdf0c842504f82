"""The engine process: intake, recovery, heartbeats, trace storage and publishing (all the I/O)
around the pure Scheduler. One `tick()` does one piece of work and says whether it did any."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from engine import health
from engine.inbox import Inbox, late_reports
from engine.intake import Claimed, Intake
from engine.messages import CallReport, CallRequest, Control, TaskSubmission, TraceEvent
from engine.publish import recent_events
from engine.resume import AlreadyEnded, ResumeError, history_from_events
from engine.scheduler import Scheduler
from engine.storewriter import StoreWriter

log = logging.getLogger(__name__)

FINISH_ATTEMPTS = 12  # 1 + 2 + 4 + ... capped at 30 s: about four minutes of retries


class TaskStore(Protocol):
    """Where task state and trace events are kept (the Django models in the web app)."""

    def start(self, task_id: int, engine_id: str) -> str | None:
        """Mark the task running on this engine; returns its status before, None if it is gone."""

    def save_events(self, events: list[TraceEvent]) -> None: ...

    def finish(self, task_id: int, status: str, reason: str, text: str, metrics: dict[str, Any]) -> bool:
        """Store a task's end; False if it was already final (cancelled meanwhile, say)."""

    def status_of(self, task_id: int) -> str | None: ...

    def events_of(self, task_id: int) -> list[dict[str, Any]]:
        """The stored trace of a task: {"seq", "t_ms", "kind", "payload"} in order."""

    def take_over(self, task_id: int, engine_id: str) -> bool:
        """A running task left by a dead engine now runs on this one; False if it is no longer running."""

    def fail_abandoned(self, task_id: int, reason: str) -> TraceEvent | None:
        """Mark a task that a dead engine left behind as failed; returns the final trace event."""


class Dispatcher(Protocol):
    def dispatch_all(self, requests: list[CallRequest]) -> list[tuple[CallRequest, Exception]]:
        """Send calls to the execution side (Celery queue `tools`), together where it can; returns
        the ones that could not be sent, with why."""

    def revoke(self, task_id: int, call_ids: list[str]) -> None:
        """Drop calls of a cancelled task that no worker has started yet."""


class InboxReader(Protocol):
    def drain(self) -> list[tuple[CallReport | Control, float]]:
        """What arrived since the last drain, with the wall time it reached this process."""

    def forget(self, task_id: int) -> None:
        """The task's end is stored: its reports may go (until then another engine may need them)."""

    def close(self) -> None: ...


class Publisher(Protocol):
    def publish(self, event: TraceEvent) -> None: ...

    def publish_many(self, events: list[TraceEvent]) -> None: ...

    def close(self) -> None: ...


PR_SET_TIMERSLACK = 29


def precise_timers() -> None:
    """The loop waits for a sequence's work to end (a few ms per token with a fast decoder); Linux
    lets each such wait overrun by the thread's timer slack (50 us by default) to batch wake-ups.
    1 us instead: the next token is sampled when its work is done, not up to 50 us later."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        log.info("could not lower the loop thread's timer slack")


@dataclass
class EngineConfig:
    engine_id: str
    max_active: int = 4  # tasks decoding at once (parked and blocked ones do not count)
    max_held: int = 16  # tasks held at once, waiting ones included (each holds a context)
    heartbeat_ttl: int = 15
    flush_interval_s: float = 0.25
    flush_max_events: int = 64
    intake_poll_s: float = 0.05
    # The end of a wait for a busy sequence (a device's step) is spun, not slept: a timed sleep on
    # this VM wakes 0.15 ms late at the median and 0.3 ms on average, 3-6% of a 5 ms token. 0: sleep.
    spin_s: float = 0.0
    recover_interval_s: float = 5.0
    reclaim_idle_ms: int = 2000  # a dead engine's intake entry is taken over once idle this long
    # No takeover until this engine has been connected to Redis this long (default: the heartbeat
    # TTL): after an outage, every engine's heartbeat may have lapsed; give them time to beat again.
    recover_grace_s: float | None = None
    models: list[str] = field(default_factory=list)
    # Models this engine refuses, with the reason (kept up to date by whoever loads models).
    model_problems: dict[str, str] = field(default_factory=dict)


class EngineProcess:
    def __init__(self, config: EngineConfig, scheduler: Scheduler, intake: Intake, store: TaskStore,
                 publisher: Publisher, client: redis.Redis, dispatcher: Dispatcher,
                 wake: threading.Event | None = None, on_final: Callable[[int], object] = lambda task_id: None,
                 inbox: InboxReader | None = None) -> None:
        self.config = config
        self.on_final = on_final  # what follows a task's end, once it is stored (the web app's workflow)
        self.dispatcher = dispatcher
        self.wake = wake or threading.Event()  # results, control messages and streamed tokens set it
        self.inbox = inbox or Inbox(client, config.engine_id, self.wake)
        self.scheduler = scheduler
        self.intake = intake
        self.store = store
        self.publisher = publisher
        self.r = client
        self._entries: dict[int, str] = {}  # task id -> intake entry id
        self._ending: set[str] = set()  # entries of ended tasks, until acknowledged (the store thread)
        self._unsaved: list[TraceEvent] = []
        self._unpublished: list[TraceEvent] = []  # handed to the publisher once per tick
        self.writer = StoreWriter()
        self._last_flush = time.monotonic()
        self._last_poll = self._last_beat = self._last_recover = float("-inf")  # all due at the first tick
        self._redis_failures = 0  # ticks in a row that Redis failed
        self._connected_since = time.monotonic()
        self.stopping = threading.Event()

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> None:
        log.info("engine %s started (models: %s)", self.config.engine_id, ", ".join(self.config.models))
        # Heartbeats on their own thread: a long step or a busy loop must not look like a death.
        threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True).start()
        precise_timers()
        # What the process holds by now (Django, the models, the tool registry) lives as long as
        # it does: out of the collector's sight, a full collection took 7.5 ms instead of 112 ms
        # of the loop (two in one benchmark run), a pause every task in flight would have taken.
        gc.freeze()
        try:
            while not self.stopping.is_set():
                if not self.weathered_tick():
                    self.idle_wait()
        finally:
            self.shutdown()

    def weathered_tick(self) -> bool:
        """A tick that survives Redis: on an error the engine pauses (its tasks wait; nothing is
        lost, the scheduler keeps every task's state) and tries again with a capped backoff."""
        try:
            did = self.tick()
        except redis.RedisError as exc:
            self._redis_failures += 1
            self._connected_since = time.monotonic()
            if self._redis_failures == 1:
                log.warning("Redis failed (%s): the engine pauses its tasks and retries", exc)
            self.stopping.wait(min(5.0, 0.25 * 2 ** min(self._redis_failures - 1, 5)))
            return True
        if self._redis_failures:
            log.warning("Redis answers again (after %d failed ticks): the engine goes on", self._redis_failures)
            self._redis_failures = 0
        return did

    def tick(self) -> bool:
        did = self.take_results()  # first: a result is injected at the next step
        for event in self.scheduler.expire():
            self.handle(event)
        events = self.scheduler.step()
        # Dispatch before publishing: a call starts the moment its [END] is decoded.
        self.dispatch()
        for event in events:
            self.handle(event)
        # Bookkeeping after the step: a sequence that is ready waits for none of it, and a device
        # sequence's next token is being computed meanwhile (an intake poll is a Redis round trip).
        self.heartbeat()
        did = self.recover() or did
        did = self.poll_intake() or did
        self.hand_over()
        self.flush()
        # A prefill chunk has no events but is work: waiting for a wake-up after each one added up
        # to 50 ms per 128 prompt tokens to the time to first token.
        return did or bool(events) or self.scheduler.worked

    def dispatch(self) -> None:
        requests = self.scheduler.take_dispatches()
        if not requests:
            return
        # Broker down: the model sees an error instead of waiting forever.
        for request, exc in self.dispatcher.dispatch_all(requests):
            log.error("could not dispatch call %s of task %s: %s", request.call_id, request.task_id, exc)
            for event in self.scheduler.deliver(request.task_id, request.call_id, ok=False,
                                                error=f"could not dispatch the call: {exc}", error_type="dispatch"):
                self.handle(event)

    def control(self, message: Control) -> None:
        if message.action == "message":
            events = self.scheduler.human_message(message.task_id, message.text)
            if not events:
                log.info("message for task %s, which this engine no longer runs: dropped", message.task_id)
            for event in events:
                self.handle(event)
            return
        if message.action != "cancel":
            log.error("unknown control action %r for task %s", message.action, message.task_id)
            return
        for event in self.scheduler.cancel(message.task_id, message.reason or "cancelled"):
            pending = event.payload.get("pending_calls", [])
            if pending:
                self.dispatcher.revoke(message.task_id, pending)
            self.handle(event)

    def take_results(self) -> bool:
        reports = self.inbox.drain()
        picked = time.time()
        for rep, received in reports:
            if isinstance(rep, Control):
                self.control(rep)
                continue
            kind = "call_started" if rep.phase == "started" else "call_finished"
            t_ms = self.scheduler.t_ms
            event = self.scheduler.event(rep.task_id, kind, {
                "call_id": rep.call_id, "worker": rep.worker, "ok": rep.ok, "error": rep.error,
                # worker's clock, arrival in this process, and when the main loop took it
                "at_ms": t_ms(rep.task_id, rep.at), "received_ms": t_ms(rep.task_id, received),
                "picked_ms": t_ms(rep.task_id, picked),
            })
            if event is None:
                log.info("report for task %s which this engine no longer runs: dropped", rep.task_id)
                self.inbox.forget(rep.task_id)
                continue
            self.handle(event)
            if rep.phase == "finished":
                for ev in self.scheduler.deliver(rep.task_id, rep.call_id, ok=rep.ok, value=rep.result,
                                                 error=rep.error, error_type=rep.error_type or "error"):
                    self.handle(ev)
            self.dispatch()  # results can release calls that were waiting on them
        return bool(reports)

    # -- steps (each returns whether it did work) ------------------------------------------
    def _beat_forever(self) -> None:
        while not self.stopping.wait(self.config.heartbeat_ttl / 3):
            try:
                self.heartbeat(force=True)
            except redis.RedisError as exc:  # the loop says so once; keep trying
                log.debug("heartbeat failed: %s", exc)

    def heartbeat(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last_beat < self.config.heartbeat_ttl / 3:
            return False
        self._last_beat = now
        health.beat(self.r, "engine", self.config.engine_id, self.config.heartbeat_ttl,
                    models=self.config.models, active=self.scheduler.busy, held=self.scheduler.active,
                    capacity=self.config.max_active, problems=dict(self.config.model_problems))
        return False  # bookkeeping, not work

    def poll_intake(self) -> bool:
        now = time.monotonic()
        free = min(self.config.max_active - self.scheduler.busy, self.config.max_held - self.scheduler.active)
        if free <= 0 or now - self._last_poll < self.config.intake_poll_s:
            return False
        self._last_poll = now
        claimed = self.intake.claim(self.config.engine_id, count=free)
        for item in claimed:
            self.take(item)
        return bool(claimed)

    def idle_wait(self) -> None:
        """Idle: sleep until a result arrives, the next intake poll is due or a busy sequence is
        ready again. Waiting for a sequence, the last `spin_s` are spun as a GPU engine waits for
        its device (CUDA's default synchronisation spins), yielding the CPU and the GIL each turn."""
        busy = self.scheduler.idle_s()
        if busy is None or busy > self.config.intake_poll_s or self.config.spin_s <= 0:
            self.wake.wait(self.config.intake_poll_s if busy is None else min(busy, self.config.intake_poll_s))
        else:
            ready = time.monotonic() + busy
            if busy <= self.config.spin_s or not self.wake.wait(busy - self.config.spin_s):
                while not self.wake.is_set() and time.monotonic() < ready:
                    os.sched_yield()
        self.wake.clear()

    def recover(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last_recover < self.config.recover_interval_s:
            return False
        grace = self.config.heartbeat_ttl if self.config.recover_grace_s is None else self.config.recover_grace_s
        if not force and now - self._connected_since < grace:
            return False
        self._last_recover = now
        self.fence()
        alive = {b["id"] for b in health.alive(self.r, "engine")}
        claimed = self.intake.reclaim(self.config.engine_id, alive, min_idle_ms=self.config.reclaim_idle_ms)
        for item in claimed:
            log.warning("engine %s died holding entry %s; recovering it", item.previous_owner, item.entry_id)
            self.take(item)
        held = set(self._entries.values()) | self._ending
        orphans = self.intake.orphans(self.config.engine_id, held, min_idle_ms=self.config.reclaim_idle_ms)
        for item in orphans:
            log.warning("entry %s was delivered to this engine but the reply was lost; taking it up", item.entry_id)
            self.take(item)
        return bool(claimed or orphans)

    def fence(self) -> None:
        """Drop the tasks another engine has taken over (it claimed their intake entries, taking
        this engine for dead): only one engine may write a task's trace. Nothing is stored."""
        for task_id, entry in list(self._entries.items()):
            owner = self.intake.owner(entry)
            if owner is None or owner == self.config.engine_id:
                continue
            log.error("task %s was taken over by engine %s: this engine drops it", task_id, owner)
            self.scheduler.cancel(task_id, f"taken over by engine {owner}")
            del self._entries[task_id]
            self._unsaved = [e for e in self._unsaved if e.task_id != task_id]

    # -- task lifecycle -------------------------------------------------------------------
    def take(self, item: Claimed) -> None:
        sub = item.submission
        if sub is None:
            self.intake.done(item.entry_id)
            return
        if item.previous_owner is None:
            before = self.store.start(sub.task_id, self.config.engine_id)
        else:
            before = self.store.status_of(sub.task_id)
            if before == "running":
                outcome, why = self.resume(sub, item.previous_owner)
                if outcome == "resumed":
                    self._entries[sub.task_id] = item.entry_id
                    return
                if outcome == "fresh":
                    before = "queued"  # nothing of it was recorded: it starts here like a queued task
                final = None if not why else self.store.fail_abandoned(
                    sub.task_id, f"engine {item.previous_owner} stopped while running this task "
                    f"(detected by engine {self.config.engine_id}), and it could not be resumed: {why}")
                if final is not None:
                    self.publisher.publish(final)
                    self.on_final(sub.task_id)
            elif before == "queued":
                before = self.store.start(sub.task_id, self.config.engine_id)
        if before != "queued":
            # Deleted, cancelled or already final: nothing to decode.
            self.intake.done(item.entry_id)
            return
        self._entries[sub.task_id] = item.entry_id
        for event in self.scheduler.submit(sub):
            self.handle(event)

    def resume(self, sub: TaskSubmission, dead: str) -> tuple[str, str]:
        """Take over a task that engine `dead` was running, rebuilt from its record (the stored
        trace, the events only Redis still had, and results that reached the dead engine's inbox).
        ("resumed", "") when it goes on here; ("fresh", "") when nothing of it was recorded (it
        starts anew); ("over", "") when it had ended or is no longer running; else ("over", why
        it cannot be resumed)."""
        try:
            stored = self.store.events_of(sub.task_id)
            known = {e["seq"] for e in stored}
            only_redis = {e["seq"]: e for e in recent_events(self.r, sub.task_id) if e["seq"] not in known}
            if not self.store.take_over(sub.task_id, self.config.engine_id):
                return "over", ""
            if not stored and not only_redis:  # it died before the task's first event
                return "fresh", ""
            history = history_from_events(dead, stored + list(only_redis.values()))
            late = late_reports(self.r, dead, sub.task_id)
            # The dead engine's last batch, which only Redis has: stored now, so the trace has no gap.
            self.store.save_events([TraceEvent(sub.task_id, e["seq"], e["t_ms"], e["kind"], e["payload"])
                                    for e in sorted(only_redis.values(), key=lambda e: e["seq"])])
            self.scheduler.resume(sub, history, late)
        except AlreadyEnded as ended:
            p = ended.event["payload"]
            if self.store.finish(sub.task_id, p["status"], p["reason"], p["text"], p["metrics"]):
                self.on_final(sub.task_id)
            return "over", ""
        except ResumeError as exc:
            return "over", str(exc)
        log.warning("task %s: resumed from engine %s's record (%d tokens, %d frames)", sub.task_id, dead,
                    len(history.tokens), len(history.frames))
        return "resumed", ""

    def handle(self, event: TraceEvent) -> None:
        self._unsaved.append(event)
        if event.kind != "finish":
            self._unpublished.append(event)
            return
        self.hand_over()  # the end is announced after it is stored, and never before what came first
        self.flush(force=True)
        end = TaskEnd(self, event, self._entries.pop(event.task_id, None))
        # A task's end is retried for minutes (a database that is away comes back): until it is
        # stored the task would show as running.
        self.writer.submit(end, f"the end of task {event.task_id}", attempts=FINISH_ATTEMPTS)

    def hand_over(self) -> None:
        """The tick's events to the publishing thread, in order, in one hand-over."""
        if self._unpublished:
            batch, self._unpublished = self._unpublished, []
            self.publisher.publish_many(batch)

    def flush(self, force: bool = False) -> None:
        if not self._unsaved:
            return
        now = time.monotonic()
        if not force and len(self._unsaved) < self.config.flush_max_events \
                and now - self._last_flush < self.config.flush_interval_s:
            return
        batch, self._unsaved = self._unsaved, []
        self._last_flush = now
        self.writer.submit(lambda: self.store.save_events(batch), f"{len(batch)} trace events")

    def shutdown(self) -> None:
        """Stop cleanly: tasks in flight are marked failed (their KV state dies with us)."""
        for task_id in list(self._entries):
            for event in self.scheduler.cancel(task_id, "the engine was stopped while running this task"):
                payload = dict(event.payload, status="failed")
                self.handle(TraceEvent(event.task_id, event.seq, event.t_ms, event.kind, payload))
        self.hand_over()
        self.flush(force=True)
        self.writer.close()
        self.inbox.close()
        self.publisher.close()
        try:
            health.stop(self.r, "engine", self.config.engine_id)
        except redis.RedisError:
            pass
        log.info("engine %s stopped", self.config.engine_id)


class TaskEnd:
    """A task's end in three steps, each done once: store it (then announce it), acknowledge its
    intake entry, then the follow-up (only if this engine stored it). Stored before it is
    announced, and the entry kept until then: a crash in between leaves the task to recovery
    rather than lost. Called again after a failure, it goes on from the step that failed."""

    def __init__(self, proc: EngineProcess, event: TraceEvent, entry: str | None) -> None:
        self.proc, self.event, self.entry = proc, event, entry
        self.steps = ["store", "ack", "follow"]
        if entry is not None:
            proc._ending.add(entry)  # still pending, not lost: recovery must leave it alone

    def __call__(self) -> None:
        proc, event = self.proc, self.event
        if self.steps and self.steps[0] == "store":
            p = event.payload
            stored = proc.store.finish(event.task_id, p["status"], p["reason"], p["text"], p["metrics"])
            proc.publisher.publish(event)
            self.steps = ["ack", "follow"] if stored else ["ack"]
        if self.steps and self.steps[0] == "ack":
            if self.entry is not None:
                proc.intake.done(self.entry)
                proc._ending.discard(self.entry)
            proc.inbox.forget(event.task_id)
            self.steps.pop(0)
        if self.steps:
            proc.on_final(event.task_id)
            self.steps.clear()
