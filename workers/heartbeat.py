"""A worker bootstep that publishes this worker's heartbeat while it runs."""

from __future__ import annotations

import logging

import redis
from celery import bootsteps
from django.conf import settings

from engine import health

log = logging.getLogger(__name__)


class HeartbeatStep(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.tref = None
        self.client = None

    def start(self, worker):
        self.client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
        self.ident = worker.hostname
        self.info = {"concurrency": worker.concurrency,
                     "queues": sorted(worker.app.amqp.queues.keys()) if worker.app.amqp.queues else []}
        self.beat()
        self.tref = worker.timer.call_repeatedly(max(1, settings.ASYNCLM_HEARTBEAT_TTL // 3), self.beat)

    def beat(self):
        try:
            health.beat(self.client, "worker", self.ident, settings.ASYNCLM_HEARTBEAT_TTL, **self.info)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def stop(self, worker):
        if self.tref is not None:
            self.tref.cancel()
        if self.client is not None:
            try:
                health.stop(self.client, "worker", self.ident)
            except redis.RedisError:
                pass
