"""A real Celery worker process, configured from Django settings, over the real Redis broker."""

import time

from webapp.core.redis import read_health
from workers.tasks import ping


def test_a_task_makes_the_round_trip_through_a_worker(celery_worker_proc):
    sent = time.time()
    result = ping.delay(sent).get(timeout=30)
    assert result["sent_at"] == sent
    assert result["pid"] == celery_worker_proc.popen.pid  # solo pool: the worker process itself
    assert result["received_at"] >= sent


def test_a_running_worker_shows_in_service_health(celery_worker_proc):
    workers = read_health().workers
    assert any(w["pid"] == celery_worker_proc.popen.pid and "tools" in w["queues"] for w in workers)


def test_a_stopped_worker_removes_its_heartbeat(celery_worker_proc):
    celery_worker_proc.kill()
    assert all(w["pid"] != celery_worker_proc.popen.pid for w in read_health().workers)
