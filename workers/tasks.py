"""Thin Celery tasks."""

import os
import socket
import time

from celery import shared_task


@shared_task(name="workers.tasks.ping")
def ping(sent_at: float) -> dict:
    """Round trip through the broker; used by health checks and tests."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "received_at": time.time(), "sent_at": sent_at}
