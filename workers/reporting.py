"""How a worker tells the engine (durable Redis stream) and the browser (Channels) about a call."""

from __future__ import annotations

import logging
from functools import cache

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from engine.keys import RESULTS_STREAM_TTL_S, results_stream
from engine.messages import CallReport, trace_group

log = logging.getLogger(__name__)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=10)


def report(engine_id: str, rep: CallReport) -> None:
    pipe = _redis().pipeline()
    pipe.xadd(results_stream(engine_id), {"r": rep.to_json()}, maxlen=100_000, approximate=True)
    pipe.expire(results_stream(engine_id), RESULTS_STREAM_TTL_S)
    pipe.execute()


def notify_browser(rep: CallReport) -> None:
    """Live call status for the task page; the engine stores the authoritative trace event."""
    try:
        async_to_sync(get_channel_layer().group_send)(
            trace_group(rep.task_id),
            {"type": "call.report", "report": {"call_id": rep.call_id, "phase": rep.phase, "worker": rep.worker,
                                               "ok": rep.ok, "at": rep.at}},
        )
    except Exception:  # the browser view is best effort; the engine already has the report
        log.exception("could not notify the browser about call %s", rep.call_id)
