"""The one Celery app: configured from Django settings (CELERY_*), tasks from `workers`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")

app = Celery("asynclm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])

from workers.heartbeat import HeartbeatStep  # noqa: E402

app.steps["worker"].add(HeartbeatStep)
