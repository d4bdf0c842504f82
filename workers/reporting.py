"""How a worker tells the engine (durable Redis stream) and the browser (Channels) about a call."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from functools import cache

import redis
from channels.layers import get_channel_layer
from django.conf import settings

from engine.keys import INBOX_STREAM_TTL_S, inbox_stream
from engine.messages import CallReport, trace_group

log = logging.getLogger(__name__)


@cache
def worker_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=10)


# How long a worker keeps trying to hand a report to Redis: a finished call's result outlives a
# Redis restart of this length instead of being lost (the engine would then time the call out).
REPORT_PATIENCE_S = 60.0


def report(engine_id: str, rep: CallReport, patience_s: float = REPORT_PATIENCE_S,
           client: redis.Redis | None = None) -> None:
    """Hand a report to the engine's inbox, retrying with a capped backoff while Redis is
    unreachable (a worker may wait; the engine loop never does). Raises after `patience_s`."""
    deadline = time.monotonic() + patience_s
    delay = 0.1
    while True:
        try:
            pipe = (client or worker_redis()).pipeline()
            pipe.xadd(inbox_stream(engine_id), {"r": rep.to_json()}, maxlen=100_000, approximate=True)
            pipe.expire(inbox_stream(engine_id), INBOX_STREAM_TTL_S)
            pipe.execute()
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            if delay == 0.1:
                log.warning("Redis unreachable (%s): keeping the %s report of call %s and retrying for up to %g s",
                            exc, rep.phase, rep.call_id, patience_s)
            time.sleep(delay)
            delay = min(2.0, delay * 2)


class _Loop:
    """One event loop thread per worker process (prefork children start their own), so a
    notification costs the tool no loop setup and never waits for Redis."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.order = asyncio.Lock()  # FIFO: a call's reports reach the browser in order
        threading.Thread(target=self.loop.run_forever, name="browser-notify", daemon=True).start()


_loop: _Loop | None = None


def _notify_loop() -> _Loop:
    global _loop
    if _loop is None or _loop.pid != os.getpid():
        _loop = _Loop()
    return _loop


async def _send(rep: CallReport, order: asyncio.Lock) -> None:
    try:
        async with order:
            await get_channel_layer().group_send(
                trace_group(rep.task_id),
                {
                    "type": "call.report",
                    "report": {
                        "call_id": rep.call_id,
                        "phase": rep.phase,
                        "worker": rep.worker,
                        "ok": rep.ok,
                        "at": rep.at,
                    },
                },
            )
    except Exception:  # the browser view is best effort; the engine already has the report
        log.exception("could not notify the browser about call %s", rep.call_id)


def notify_browser(rep: CallReport) -> None:
    """Live call status for the task page (fire and forget); the engine stores the trace event."""
    target = _notify_loop()
    asyncio.run_coroutine_threadsafe(_send(rep, target.order), target.loop)
