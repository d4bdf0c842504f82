import pytest

from engine.messages import TraceEvent
from webapp.runs.models import Task
from webapp.runs.models import TraceEvent as Row
from webapp.runs.store import DjangoTaskStore

pytestmark = pytest.mark.django_db


@pytest.fixture
def task(alice):
    return Task.objects.create(owner=alice, prompt="p", model="smollm2-135m")


def ev(task, seq, kind="token", **payload):
    return TraceEvent(task.pk, seq, float(seq), kind, payload or {"text": f"t{seq}"})


def test_it_starts_a_queued_task_once(task):
    store = DjangoTaskStore()
    assert store.start(task.pk, "engine-1") == "queued"
    assert store.start(task.pk, "engine-2") == "running"
    task.refresh_from_db()
    assert (task.status, task.engine_id) == ("running", "engine-1") and task.started_at


def test_it_saves_events_in_one_batch_and_ignores_repeats(task, django_assert_max_num_queries):
    store = DjangoTaskStore()
    with django_assert_max_num_queries(2):
        store.save_events([ev(task, i) for i in range(1, 51)])
    store.save_events([ev(task, 50), ev(task, 51)])
    assert list(Row.objects.filter(task=task).values_list("seq", flat=True)) == list(range(1, 52))


def test_it_finishes_with_text_and_metrics(task):
    DjangoTaskStore().finish(task.pk, "finished", "", "Bonjour", {"tokens": 3})
    task.refresh_from_db()
    assert (task.status, task.final_text, task.metrics, task.is_final) == ("finished", "Bonjour", {"tokens": 3}, True)


def test_a_final_task_is_never_reopened(task):
    store = DjangoTaskStore()
    store.finish(task.pk, "cancelled", "by user", "", {})
    store.finish(task.pk, "finished", "", "late", {})
    task.refresh_from_db()
    assert task.status == "cancelled"


def test_an_abandoned_task_fails_keeping_its_streamed_text(task):
    store = DjangoTaskStore()
    store.start(task.pk, "engine-dead")
    store.save_events([ev(task, 1, kind="status", status="running"), ev(task, 2, text="Hel"), ev(task, 3, text="lo")])
    final = store.fail_abandoned(task.pk, "engine engine-dead stopped")
    task.refresh_from_db()
    assert task.status == "failed" and task.status_reason == "engine engine-dead stopped"
    assert task.final_text == "Hello"
    assert final.seq == 4 and final.kind == "finish"
    assert store.fail_abandoned(task.pk, "again") is None


@pytest.mark.django_db(transaction=True)  # the engine's writer thread runs in autocommit, as here
def test_one_tasks_bad_value_costs_only_that_event(alice, task, caplog):
    other = Task.objects.create(owner=alice, prompt="q", model="smollm2-135m")
    bad = TraceEvent(task.pk, 2, 2.0, "warning", {"message": {1, 2}})  # a set: not JSON
    DjangoTaskStore().save_events([ev(task, 1), ev(other, 1), bad, ev(other, 2), ev(task, 3)])
    assert list(Row.objects.filter(task=other).values_list("seq", flat=True)) == [1, 2]
    assert list(Row.objects.filter(task=task).values_list("seq", flat=True)) == [1, 3]
    assert "could not store its warning event 2" in caplog.text
