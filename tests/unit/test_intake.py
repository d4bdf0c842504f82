"""The durable intake on the real Redis."""

import pytest

from engine import health
from engine.intake import Intake
from engine.messages import TaskSubmission


@pytest.fixture
def intake(redis_client):
    return Intake(redis_client, stream="asynclm:test:intake", group="engines")


def sub(task_id: int) -> TaskSubmission:
    return TaskSubmission(task_id, "m", "p", 5, 0.0)


def test_it_delivers_each_task_to_one_engine(intake):
    intake.submit(sub(1))
    intake.submit(sub(2))
    first = intake.claim("engine-a", count=1)
    second = intake.claim("engine-b", count=5)
    assert [c.submission.task_id for c in first] == [1]
    assert [c.submission.task_id for c in second] == [2]
    assert intake.claim("engine-a", count=5) == []


def test_tasks_submitted_before_any_engine_started_are_not_lost(redis_client):
    Intake(redis_client, stream="asynclm:test:early", group="engines").submit(sub(7))
    # A fresh Intake object (a new engine) creates nothing new and still sees the entry.
    claimed = Intake(redis_client, stream="asynclm:test:early", group="engines").claim("engine-a")
    assert [c.submission.task_id for c in claimed] == [7]


def test_done_removes_the_entry(intake, redis_client):
    intake.submit(sub(1))
    (item,) = intake.claim("engine-a")
    intake.done(item.entry_id)
    assert redis_client.xlen("asynclm:test:intake") == 0
    assert redis_client.xpending("asynclm:test:intake", "engines")["pending"] == 0


def test_an_undecodable_entry_is_reported_not_fatal(intake, redis_client):
    intake.ensure_group()
    redis_client.xadd("asynclm:test:intake", {"msg": "{not json"})
    (item,) = intake.claim("engine-a")
    assert item.submission is None and "malformed" in item.error


def test_entries_of_a_dead_engine_are_reclaimed(intake, redis_client):
    intake.submit(sub(1))
    intake.submit(sub(2))
    intake.claim("engine-dead", count=1)
    intake.claim("engine-alive", count=1)
    health.beat(redis_client, "engine", "engine-alive", ttl=30)
    alive = {b["id"] for b in health.alive(redis_client, "engine")}
    taken = intake.reclaim("engine-new", alive, min_idle_ms=0)
    assert [(c.submission.task_id, c.previous_owner) for c in taken] == [(1, "engine-dead")]
    assert intake.reclaim("engine-new", alive, min_idle_ms=0) == []  # now owned by a live engine


def test_heartbeats_expire(redis_client):
    health.beat(redis_client, "engine", "e1", ttl=1, active=2)
    assert [b["active"] for b in health.alive(redis_client, "engine")] == [2]
    redis_client.delete("asynclm:hb:engine:e1")
    assert health.alive(redis_client, "engine") == []


def test_it_serves_owners_in_turn_so_a_backlog_delays_another_user_by_one_task_at_most(intake, redis_client):
    for n in range(100):
        intake.submit(sub(1000 + n), owner="alice")
    intake.submit(sub(1), owner="bob")
    first = [c.submission.task_id for c in intake.claim("engine-a", count=1)]
    second = [c.submission.task_id for c in intake.claim("engine-a", count=1)]
    assert first == [1000] and second == [1]  # bob's first task waited for one of alice's, not 100
    rest = [c.submission.task_id for c in intake.claim("engine-a", count=200)]
    assert rest == list(range(1001, 1100))  # each owner's tasks keep their order
    assert redis_client.llen(intake.owners) == 0 and intake.queued() == 0


def test_engines_with_free_slots_take_what_the_stream_holds_before_feeding_more(intake, redis_client):
    for n in range(3):
        intake.submit(sub(10 + n), owner="alice")
    intake.submit(sub(20), owner="bob")
    assert intake.feed(2) == 2 and intake.queued() == 2  # each submission is in one place only
    assert redis_client.xlen("asynclm:test:intake") == 2
    taken = [c.submission.task_id for c in intake.claim("engine-a", count=3)]
    assert taken == [10, 20, 11]  # the two already in the stream, then one fed
    assert intake.queued() == 1


def test_an_entry_whose_delivery_reply_was_lost_goes_back_to_its_live_owner(intake, redis_client):
    intake.submit(sub(1))
    intake.submit(sub(2))
    intake.feed(2)
    # engine-a's read happened in Redis, but its answer never reached engine-a (Redis stopped).
    redis_client.xreadgroup("engines", "engine-a", {"asynclm:test:intake": ">"}, count=1)
    (kept,) = intake.claim("engine-a")  # the one it did receive
    assert intake.reclaim("engine-b", alive={"engine-a"}, min_idle_ms=0) == []  # its owner is alive
    lost = intake.orphans("engine-a", held={kept.entry_id}, min_idle_ms=0)
    assert [c.submission.task_id for c in lost] == [1]
    assert lost[0].previous_owner is None
    # Taken up, it is held now: asked again, nothing is lost.
    assert intake.orphans("engine-a", held={kept.entry_id, lost[0].entry_id}, min_idle_ms=0) == []


def test_it_leaves_entries_younger_than_the_idle_time_and_other_engines_entries(intake):
    intake.submit(sub(1))
    intake.claim("engine-b")
    intake.submit(sub(2))
    intake.claim("engine-a")
    assert intake.orphans("engine-a", held=set(), min_idle_ms=60_000) == []
    assert [c.submission.task_id for c in intake.orphans("engine-a", held=set(), min_idle_ms=0)] == [2]
