"""Heartbeats: each engine and Celery worker refreshes a Redis key with a TTL; a key that
expired means the process is gone."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis

from engine.keys import HEARTBEAT_PREFIX


def process_id(kind: str) -> str:
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"


def beat(client: redis.Redis, kind: str, ident: str, ttl: int, **info: Any) -> None:
    body = {"id": ident, "kind": kind, "host": socket.gethostname(), "pid": os.getpid(), "ts": time.time(), **info}
    client.set(f"{HEARTBEAT_PREFIX}{kind}:{ident}", json.dumps(body), ex=ttl)


def stop(client: redis.Redis, kind: str, ident: str) -> None:
    client.delete(f"{HEARTBEAT_PREFIX}{kind}:{ident}")


def alive(client: redis.Redis, kind: str) -> list[dict[str, Any]]:
    keys = list(client.scan_iter(match=f"{HEARTBEAT_PREFIX}{kind}:*", count=200))
    if not keys:
        return []
    found = []
    for raw in client.mget(keys):
        if raw:
            try:
                found.append(json.loads(raw))
            except ValueError:
                continue
    return sorted(found, key=lambda b: b["id"])
