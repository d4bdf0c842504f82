"""The one Celery app: configured from Django settings (CELERY_*), tasks from `workers`."""

import gc
import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")

app = Celery("asynclm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])

from workers.heartbeat import HeartbeatStep  # noqa: E402

app.steps["worker"].add(HeartbeatStep)


@worker_ready.connect  # the main process, which hands every call to a pool process
@worker_process_init.connect  # each pool process, once forked
def freeze_what_the_process_loaded(**kwargs: object) -> None:
    """Django, the tools and Celery itself live as long as the process: out of the garbage
    collector's sight, a full collection takes milliseconds instead of a tenth of a second (as
    measured in the engine), a pause a call would otherwise wait for."""
    gc.freeze()
