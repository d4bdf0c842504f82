"""The engine process: intake, recovery, heartbeats, trace storage and publishing (all the I/O)
around the pure Scheduler. One `tick()` does one piece of work and says whether it did any."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import redis

from engine import health
from engine.intake import Claimed, Intake
from engine.messages import TraceEvent
from engine.scheduler import Scheduler

log = logging.getLogger(__name__)


class TaskStore(Protocol):
    """Where task state and trace events are kept (the Django models in the web app)."""

    def start(self, task_id: int, engine_id: str) -> str | None:
        """Mark the task running on this engine; returns its status before, None if it is gone."""

    def save_events(self, events: list[TraceEvent]) -> None: ...

    def finish(self, task_id: int, status: str, reason: str, text: str, metrics: dict) -> None: ...

    def status_of(self, task_id: int) -> str | None: ...

    def fail_abandoned(self, task_id: int, reason: str) -> TraceEvent | None:
        """Mark a task that a dead engine left behind as failed; returns the final trace event."""


class Publisher(Protocol):
    def publish(self, event: TraceEvent) -> None: ...

    def close(self) -> None: ...


@dataclass
class EngineConfig:
    engine_id: str
    max_active: int = 4
    heartbeat_ttl: int = 15
    flush_interval_s: float = 0.25
    flush_max_events: int = 64
    intake_poll_s: float = 0.05
    recover_interval_s: float = 5.0
    idle_block_ms: int = 500
    models: list[str] = field(default_factory=list)


class EngineProcess:
    def __init__(self, config: EngineConfig, scheduler: Scheduler, intake: Intake, store: TaskStore,
                 publisher: Publisher, client: redis.Redis) -> None:
        self.config = config
        self.scheduler = scheduler
        self.intake = intake
        self.store = store
        self.publisher = publisher
        self.r = client
        self._entries: dict[int, str] = {}  # task id -> intake entry id
        self._unsaved: list[TraceEvent] = []
        self._last_flush = time.monotonic()
        self._last_poll = 0.0
        self._last_beat = 0.0
        self._last_recover = 0.0
        self.stopping = threading.Event()

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> None:
        log.info("engine %s started (models: %s)", self.config.engine_id, ", ".join(self.config.models))
        self.heartbeat(force=True)
        self.recover(force=True)
        try:
            while not self.stopping.is_set():
                did_work = self.tick()
                if not did_work:
                    self.wait_for_intake()
        finally:
            self.shutdown()

    def tick(self) -> bool:
        self.heartbeat()
        did = self.recover()
        did = self.poll_intake() or did
        events = self.scheduler.step()
        for event in events:
            self.handle(event)
        self.flush()
        return did or bool(events)

    # -- steps (each returns whether it did work) ------------------------------------------
    def heartbeat(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last_beat < self.config.heartbeat_ttl / 3:
            return False
        self._last_beat = now
        health.beat(self.r, "engine", self.config.engine_id, self.config.heartbeat_ttl,
                    models=self.config.models, active=self.scheduler.active,
                    capacity=self.config.max_active)
        return False  # bookkeeping, not work

    def poll_intake(self) -> bool:
        now = time.monotonic()
        free = self.config.max_active - self.scheduler.active
        if free <= 0 or now - self._last_poll < self.config.intake_poll_s:
            return False
        self._last_poll = now
        claimed = self.intake.claim(self.config.engine_id, count=free)
        for item in claimed:
            self.take(item)
        return bool(claimed)

    def wait_for_intake(self) -> None:
        """Idle: block on the intake instead of spinning (bounded so heartbeats keep going)."""
        if self.scheduler.active >= self.config.max_active:
            self.stopping.wait(0.01)
            return
        for item in self.intake.claim(self.config.engine_id, count=1, block_ms=self.config.idle_block_ms):
            self.take(item)

    def recover(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last_recover < self.config.recover_interval_s:
            return False
        self._last_recover = now
        alive = {b["id"] for b in health.alive(self.r, "engine")}
        claimed = self.intake.reclaim(self.config.engine_id, alive)
        for item in claimed:
            log.warning("engine %s died holding entry %s; recovering it", item.previous_owner, item.entry_id)
            self.take(item)
        return bool(claimed)

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
                # Its tokens and KV state died with that engine; say so rather than restart silently.
                final = self.store.fail_abandoned(
                    sub.task_id, f"engine {item.previous_owner} stopped while running this task "
                    f"(detected by engine {self.config.engine_id})")
                if final is not None:
                    self.publisher.publish(final)
            elif before == "queued":
                before = self.store.start(sub.task_id, self.config.engine_id)
        if before != "queued":
            # Deleted, cancelled or already final: nothing to decode.
            self.intake.done(item.entry_id)
            return
        self._entries[sub.task_id] = item.entry_id
        for event in self.scheduler.submit(sub):
            self.handle(event)

    def handle(self, event: TraceEvent) -> None:
        self._unsaved.append(event)
        if event.kind != "finish":
            self.publisher.publish(event)
            return
        self.flush(force=True)
        p = event.payload
        self.store.finish(event.task_id, p["status"], p["reason"], p["text"], p["metrics"])
        self.publisher.publish(event)
        entry = self._entries.pop(event.task_id, None)
        if entry is not None:
            self.intake.done(entry)

    def flush(self, force: bool = False) -> None:
        if not self._unsaved:
            return
        now = time.monotonic()
        if not force and len(self._unsaved) < self.config.flush_max_events \
                and now - self._last_flush < self.config.flush_interval_s:
            return
        batch, self._unsaved = self._unsaved, []
        self._last_flush = now
        self.store.save_events(batch)

    def shutdown(self) -> None:
        """Stop cleanly: tasks in flight are marked failed (their KV state dies with us)."""
        for task_id in list(self._entries):
            for event in self.scheduler.cancel(task_id, "the engine was stopped while running this task"):
                payload = dict(event.payload, status="failed")
                self.handle(TraceEvent(event.task_id, event.seq, event.t_ms, event.kind, payload))
        self.flush(force=True)
        self.publisher.close()
        try:
            health.stop(self.r, "engine", self.config.engine_id)
        except redis.RedisError:
            pass
        log.info("engine %s stopped", self.config.engine_id)
