"""A real Celery worker process, configured from Django settings, over the real Redis broker."""

import time

from webapp.core.redis import read_health
from workers.tasks import ping


def test_a_task_makes_the_round_trip_through_a_worker(celery_worker_proc):
    sent = time.time()
    result = ping.delay(sent).get(timeout=30)
    assert result["sent_at"] == sent
    assert result["pid"] != celery_worker_proc.popen.pid  # ran in a prefork child
    assert result["received_at"] >= sent


def test_a_running_worker_shows_in_service_health(own_celery_worker):
    workers = read_health().workers
    assert any(w["pid"] == own_celery_worker.popen.pid and "tools" in w["queues"] for w in workers)


def test_a_stopped_worker_removes_its_heartbeat(own_celery_worker):
    own_celery_worker.kill()
    assert all(w["pid"] != own_celery_worker.popen.pid for w in read_health().workers)
