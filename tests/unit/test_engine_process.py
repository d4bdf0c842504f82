"""The engine process's own logic (engine/proc.py) with its collaborators injected: the real Redis
intake and heartbeats, the pure scheduler on a scripted backend, and recording stand-ins for the
store, the publisher, the dispatcher and the inbox."""

from __future__ import annotations

import threading
import time

import pytest

from engine import health
from engine.intake import Intake
from engine.messages import Control, TaskSubmission, TraceEvent
from engine.proc import EngineConfig, EngineProcess
from engine.scheduler import Scheduler
from tests.scripted import ScriptedBackend
from tests.unit.test_scheduler_calls import F

ENGINE = "engine-unit"


class Store:
    def __init__(self) -> None:
        self.status: dict[int, str] = {}
        self.batches: list[list[TraceEvent]] = []
        self.finished: list[tuple[int, str]] = []
        self.abandoned: list[int] = []

    def start(self, task_id, engine_id):
        before = self.status.get(task_id)
        if before == "queued":
            self.status[task_id] = "running"
        return before

    def save_events(self, events):
        self.batches.append(list(events))

    def finish(self, task_id, status, reason, text, metrics):
        if self.status.get(task_id) in ("finished", "failed", "cancelled"):
            return False
        self.status[task_id] = status
        self.finished.append((task_id, status))
        return True

    def status_of(self, task_id):
        return self.status.get(task_id)

    def events_of(self, task_id):
        return []

    def take_over(self, task_id, engine_id):
        return self.status.get(task_id) == "running"

    def fail_abandoned(self, task_id, reason):
        self.status[task_id] = "failed"
        self.abandoned.append(task_id)
        return TraceEvent(task_id, 99, 0.0, "finish", {"status": "failed", "reason": reason})


class Publisher:
    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        self.handovers: list[int] = []  # events per hand-over

    def publish(self, event):
        self.events.append(event)
        self.handovers.append(1)

    def publish_many(self, events):
        self.events.extend(events)
        self.handovers.append(len(events))

    def close(self):
        pass


class Dispatcher:
    def __init__(self) -> None:
        self.dispatched, self.revoked = [], []

    def dispatch_all(self, requests):
        self.dispatched.extend(requests)
        return []

    def revoke(self, task_id, call_ids):
        self.revoked.append((task_id, sorted(call_ids)))


class Inbox:
    def __init__(self) -> None:
        self.items: list = []

    def drain(self):
        out, self.items = self.items, []
        return [(item, time.time()) for item in out]

    def forget(self, task_id):
        pass

    def close(self):
        pass


@pytest.fixture
def engine(redis_client):
    backend = ScriptedBackend([b"[CALL] a [HEAD] f(a=1) [END]", b" and", b" more", b"[TRAP][END]", b" done"])
    finals: list[int] = []
    proc = EngineProcess(
        EngineConfig(ENGINE, flush_interval_s=60.0, flush_max_events=5, recover_interval_s=0.0, reclaim_idle_ms=0,
                     recover_grace_s=0.0),
        Scheduler(lambda name: backend, engine_id=ENGINE), Intake(redis_client), Store(), Publisher(), redis_client,
        Dispatcher(), on_final=finals.append, inbox=Inbox(),
    )
    proc.finals = finals
    yield proc
    proc.writer.close()


def submit(proc: EngineProcess, task_id: int, status: str = "queued") -> None:
    proc.store.status[task_id] = status
    proc.intake.submit(TaskSubmission(task_id, "scripted", "go", 50, time.time(), tools=[F.to_dict()]))


def run(proc: EngineProcess, ticks: int = 200) -> None:
    for _ in range(ticks):
        proc.tick()


def test_it_takes_a_task_dispatches_its_call_and_stores_its_end_before_announcing_it(engine):
    submit(engine, 1)
    run(engine)
    (request,) = engine.dispatcher.dispatched
    assert (request.task_id, request.call_id, request.engine_id) == (1, "a", ENGINE)
    assert engine.store.status[1] == "running"  # parked on the trap: the result has not come
    engine.inbox.items.append(_report(engine, 1, "a"))
    run(engine)
    engine.writer.close()
    assert engine.store.finished == [(1, "finished")]
    assert engine.publisher.events[-1].kind == "finish"
    assert engine.finals == [1]  # what follows a task's end runs once it is stored
    stored = [e.seq for batch in engine.store.batches for e in batch]
    assert stored == list(range(1, len(stored) + 1))  # every event stored, in order, once
    assert not engine.intake.r.xpending(engine.intake.stream, engine.intake.group)["pending"]


def test_it_hands_a_ticks_events_to_the_publisher_at_once_in_order_and_the_end_last(engine):
    submit(engine, 1)
    handovers = []
    for _ in range(30):
        before = len(engine.publisher.handovers)
        engine.tick()
        handovers.append(len(engine.publisher.handovers) - before)
    assert max(handovers) <= 1  # one wake-up of the publishing thread per tick at most
    assert len(engine.publisher.handovers) < len(engine.publisher.events)  # a tick's events went together
    engine.inbox.items.append(_report(engine, 1, "a"))
    run(engine)
    engine.writer.close()
    seqs = [e.seq for e in engine.publisher.events]
    assert seqs == sorted(seqs) and engine.publisher.events[-1].kind == "finish"


def test_it_writes_events_in_batches_of_the_configured_size_and_all_at_the_end(engine):
    submit(engine, 1)
    run(engine, 30)
    engine.writer.close()
    sizes = [len(batch) for batch in engine.store.batches]
    assert sizes and all(size >= 5 for size in sizes)  # no batch before 5 events (the interval is 60 s)


def test_a_cancel_revokes_the_calls_no_worker_has_finished(engine):
    submit(engine, 1)
    run(engine)
    engine.inbox.items.append(Control(1, "cancel", reason="by the user"))
    run(engine, 5)
    engine.writer.close()
    assert engine.dispatcher.revoked == [(1, ["a"])]
    assert engine.store.finished == [(1, "cancelled")] and engine.finals == [1]


def test_a_task_finished_elsewhere_meanwhile_has_no_follow_up(engine):
    submit(engine, 1)
    run(engine)
    engine.store.status[1] = "cancelled"  # the web cancelled it while it ran
    engine.inbox.items.append(_report(engine, 1, "a"))
    run(engine)
    engine.writer.close()
    assert engine.store.finished == [] and engine.finals == []


def test_it_recovers_the_entries_of_a_dead_engine(engine, redis_client, monkeypatch):
    # A dead engine claimed three tasks: one it had started, whose record cannot be replayed
    # (failed, with the reason); one it had marked running before recording anything (starts
    # here); one still queued (runs here).
    for task_id in (1, 2, 3):
        submit(engine, task_id)
    engine.intake.claim("engine-dead", count=3)
    engine.store.status[1] = engine.store.status[2] = "running"
    monkeypatch.setattr(engine.store, "events_of", lambda task_id: [
        {"seq": 1, "kind": "status", "payload": {"started_at": 1.0}},
        {"seq": 3, "kind": "token", "payload": {"id": 1}}] if task_id == 1 else [])
    assert "engine-dead" not in {b["id"] for b in health.alive(redis_client, "engine")}  # no heartbeat
    engine.recover(force=True)
    assert engine.store.abandoned == [1] and engine.finals == [1]
    finish = engine.publisher.events[0]
    assert finish.kind == "finish" and "engine-dead" in finish.payload["reason"] and "gaps" in finish.payload["reason"]
    assert engine.scheduler.task(2) is not None and engine.scheduler.task(3) is not None


def test_a_dead_engines_recorded_end_is_stored_as_it_was_and_its_entry_acked(engine, redis_client, monkeypatch):
    # The dead engine recorded the task's end (its trace says finished) but died before storing
    # the task's final state: the engine that finds it stores that end instead of running it again.
    submit(engine, 1)
    engine.intake.claim("engine-dead", count=1)
    engine.store.status[1] = "running"
    end = {"status": "finished", "reason": "", "text": "the answer", "metrics": {"tokens": 3}}
    monkeypatch.setattr(engine.store, "events_of", lambda task_id: [
        {"seq": 1, "kind": "status", "payload": {"started_at": 1.0}},
        {"seq": 2, "kind": "token", "payload": {"id": 1, "text": "the answer"}},
        {"seq": 3, "kind": "finish", "payload": end}])
    engine.recover(force=True)
    assert engine.store.finished == [(1, "finished")] and engine.finals == [1]
    assert engine.store.abandoned == [] and engine.scheduler.task(1) is None
    assert redis_client.xpending(engine.intake.stream, engine.intake.group)["pending"] == 0
    run(engine, 20)
    assert engine.store.finished == [(1, "finished")] and engine.publisher.events == []


def test_an_entry_delivered_to_it_whose_reply_was_lost_runs_here(engine, redis_client):
    # Redis handed the entry to this engine, then stopped before the answer came back: the entry
    # is pending to a live engine, so no other engine takes it; this one must.
    submit(engine, 1)
    engine.intake.feed(1)
    redis_client.xreadgroup(engine.intake.group, ENGINE, {engine.intake.stream: ">"}, count=1)
    assert engine.scheduler.task(1) is None
    engine.recover(force=True)
    assert engine.scheduler.task(1) is not None
    run(engine)  # every tick recovers too (no interval, no idle time): a held entry stays where it is
    (request,) = engine.dispatcher.dispatched
    engine.inbox.items.append(_report(engine, 1, request.call_id))
    run(engine)
    engine.writer.close()
    assert engine.store.finished == [(1, "finished")] and engine.finals == [1]
    assert redis_client.xpending(engine.intake.stream, engine.intake.group)["pending"] == 0


def test_a_task_another_engine_took_over_is_dropped_without_writing_anything(engine, redis_client):
    submit(engine, 1)
    run(engine, 20)
    assert engine.scheduler.task(1) is not None
    # Another engine, taking this one for dead, claims its entry.
    (taken,) = Intake(redis_client).reclaim("engine-other", alive=set(), min_idle_ms=0)
    assert taken.previous_owner == ENGINE
    health.beat(redis_client, "engine", "engine-other", ttl=30)  # and it is alive
    engine.recover(force=True)
    assert engine.scheduler.task(1) is None and engine.store.finished == []
    run(engine, 20)
    assert engine.store.finished == [] and not [e for e in engine.publisher.events if e.kind == "finish"]


def test_it_takes_over_nothing_until_it_has_been_connected_for_a_heartbeat_period(redis_client):
    backend = ScriptedBackend([b" hi"])
    proc = EngineProcess(EngineConfig(ENGINE, recover_interval_s=0.0, reclaim_idle_ms=0, heartbeat_ttl=30),
                         Scheduler(lambda name: backend, engine_id=ENGINE), Intake(redis_client), Store(), Publisher(),
                         redis_client, Dispatcher(), inbox=Inbox())
    try:
        submit(proc, 1)
        proc.intake.claim("engine-dead", count=1)
        assert proc.recover() is False  # just connected: the other engines may not have beaten yet
        assert proc.recover(force=True) is True
    finally:
        proc.writer.close()


def _report(proc: EngineProcess, task_id: int, call_id: str):
    from engine.messages import CallReport

    return CallReport(task_id, call_id, "finished", "w/1", time.time(), ok=True, result=2)


def test_a_redis_outage_pauses_the_engine_and_it_goes_on_after(tmp_path, caplog):
    import socket

    import redis

    from tests.helpers import wait_for
    from webapp.core.processes import PrivateRedis, redis_answers

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = PrivateRedis(f"redis://127.0.0.1:{port}/0", tmp_path)
    server.ensure()
    client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)
    backend = ScriptedBackend([b"[CALL] a [HEAD] f(a=1) [END]", b"[TRAP][END]", b" done"])
    engine = EngineProcess(EngineConfig(ENGINE), Scheduler(lambda name: backend, engine_id=ENGINE), Intake(client),
                           Store(), Publisher(), client, Dispatcher(), inbox=Inbox())
    try:
        submit(engine, 1)
        for _ in range(50):
            engine.weathered_tick()
        assert engine.dispatcher.dispatched and engine.store.status[1] == "running"  # parked, waiting
        server.stop()
        wait_for(lambda: not redis_answers("127.0.0.1", port), 10, "the private Redis to stop")
        # Ticks go on without an exception (the engine stays up) until one meets the outage.
        wait_for(lambda: engine.weathered_tick() is not None and "Redis failed" in caplog.text, 10,
                 "a tick to meet the outage")
        engine.weathered_tick()
        assert engine.scheduler.task(1) is not None  # the task waits, with its state
        server.ensure()  # back (empty: this one keeps no data)
        engine.inbox.items.append(_report(engine, 1, "a"))
        for _ in range(50):
            engine.weathered_tick()
        engine.writer.close()
        assert engine.store.finished == [(1, "finished")] and "Redis answers again" in caplog.text
    finally:
        server.stop()


def test_a_tasks_end_is_retried_from_the_step_that_failed(engine, monkeypatch):
    submit(engine, 1)
    run(engine)
    failures = {"done": 1}
    original = engine.intake.done

    def flaky_done(entry_id):
        if failures["done"]:
            failures["done"] -= 1
            raise ConnectionError("Redis went away")
        original(entry_id)

    monkeypatch.setattr(engine.intake, "done", flaky_done)
    monkeypatch.setattr("engine.storewriter.time.sleep", lambda s: None)
    engine.inbox.items.append(_report(engine, 1, "a"))
    run(engine)
    engine.writer.close()
    # Stored once (not again on the retry, which would have said "already final") and followed up.
    assert engine.store.finished == [(1, "finished")] and engine.finals == [1] and failures["done"] == 0


def test_a_wait_for_a_busy_sequence_sleeps_until_its_last_moments_then_spins_until_it_is_ready(engine, monkeypatch):
    engine.config.spin_s = 0.02
    ready = time.monotonic() + 0.05
    monkeypatch.setattr(engine.scheduler, "idle_s", lambda: max(0.0, ready - time.monotonic()))
    slept: list[float] = []
    sleep = engine.wake.wait
    monkeypatch.setattr(engine.wake, "wait", lambda timeout=None: slept.append(timeout) or sleep(timeout))
    engine.idle_wait()
    assert time.monotonic() >= ready
    assert len(slept) == 1 and 0.0 < slept[0] <= 0.03  # the sleep stops spin_s before the sequence is ready


def test_a_result_that_arrives_while_the_engine_spins_ends_the_wait_at_once(engine, monkeypatch):
    engine.config.spin_s, engine.config.intake_poll_s = 5.0, 5.0  # the whole wait is spun
    monkeypatch.setattr(engine.scheduler, "idle_s", lambda: 2.0)
    timer = threading.Timer(0.01, engine.wake.set)
    timer.start()
    started = time.monotonic()
    engine.idle_wait()
    assert time.monotonic() - started < 1.5 and not engine.wake.is_set()
    timer.join()


def test_without_spinning_a_wait_for_a_busy_sequence_is_one_sleep(engine, monkeypatch):
    engine.config.spin_s = 0.0
    monkeypatch.setattr(engine.scheduler, "idle_s", lambda: 0.01)
    slept: list[float] = []
    sleep = engine.wake.wait
    monkeypatch.setattr(engine.wake, "wait", lambda timeout=None: slept.append(timeout) or sleep(timeout))
    engine.idle_wait()
    assert slept == [0.01]


def test_a_tick_steps_the_tasks_and_dispatches_before_its_bookkeeping(engine, monkeypatch):
    """A ready sequence waits for no intake poll, heartbeat or recovery (a Redis round trip each):
    those run after the step, while a device computes the next token."""
    submit(engine, 1)
    order: list[str] = []
    for name in ("poll_intake", "heartbeat", "recover", "dispatch"):
        original = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda *a, _o=original, _n=name, **k: order.append(_n) or _o(*a, **k))
    step = engine.scheduler.step
    monkeypatch.setattr(engine.scheduler, "step", lambda: order.append("step") or step())
    engine.tick()  # takes the task
    order.clear()
    engine.tick()
    assert order.index("step") < order.index("dispatch") < order.index("heartbeat")
    assert order.index("step") < order.index("recover") and order.index("step") < order.index("poll_intake")


def test_what_the_process_holds_when_the_loop_starts_is_kept_out_of_the_collectors_sight(engine):
    import gc

    engine.stopping.set()
    gc.unfreeze()
    try:
        engine.run()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
