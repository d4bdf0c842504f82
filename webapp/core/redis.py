"""The web process's Redis client and the service health read from heartbeats."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import redis
from django.conf import settings

from engine import health


class ServiceUnavailable(Exception):
    """Redis, which carries tasks to the engine, cannot be reached."""


@cache
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5)


@dataclass
class Health:
    redis_ok: bool
    error: str = ""
    engines: list[dict] = field(default_factory=list)
    workers: list[dict] = field(default_factory=list)

    @property
    def engine_ids(self) -> set[str]:
        return {e["id"] for e in self.engines}


def read_health() -> Health:
    try:
        r = client()
        return Health(True, engines=health.alive(r, "engine"), workers=health.alive(r, "worker"))
    except redis.RedisError as exc:
        return Health(False, error=f"Redis at {settings.REDIS_URL} is not reachable ({exc})")
