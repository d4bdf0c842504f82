"""The Celery app's own set-up."""

import gc

from celery.signals import worker_process_init, worker_ready

import webapp.celery  # noqa: F401  (connects the handlers)


def test_a_worker_and_its_pool_processes_keep_what_they_loaded_out_of_the_collectors_sight():
    for signal in (worker_ready, worker_process_init):
        gc.unfreeze()
        try:
            signal.send(sender=None)
            assert gc.get_freeze_count() > 0
        finally:
            gc.unfreeze()
