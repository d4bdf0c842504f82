"""Reading one task's trace as it is written, outside a websocket: each event once, in order.

What is stored comes first (the database, then the Redis catch-up stream for events the engine
has not flushed yet), then live events from the task's channel group, which the follower joined
before reading storage so that nothing falls between the two. A live batch that skips sequence
numbers (the layer dropped a message) is filled in from storage. The trace ends with its `finish`
event, or with the task's final status for a task that ended without one (cancelled in the queue).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import redis
import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from engine.keys import trace_stream
from engine.messages import trace_group
from webapp.runs.models import Task, TraceEvent


@database_sync_to_async
def stored_events(task_id: int, after: int) -> list[dict]:
    return [e.as_message() for e in TraceEvent.objects.filter(task_id=task_id, seq__gt=after).order_by("seq")]


async def buffered_events(task_id: int, after: int) -> list[dict]:
    client = aioredis.from_url(settings.REDIS_URL)
    try:
        entries = await client.xrange(trace_stream(task_id))
    finally:
        await client.aclose()
    events = (json.loads(fields[b"e"]) for _, fields in entries)
    return [e for e in events if e["seq"] > after]


def newer(events: list[dict], last_seq: int) -> tuple[list[dict], int]:
    """The events after `last_seq`, in order and each once, and the new last sequence number
    (what a reader that has seen up to `last_seq` should pass on)."""
    fresh = []
    for event in sorted(events, key=lambda e: e["seq"]):
        if event["seq"] > last_seq:
            fresh.append(event)
            last_seq = event["seq"]
    return fresh, last_seq


@database_sync_to_async
def _is_final(task_id: int) -> bool:
    return Task.objects.filter(pk=task_id, status__in=Task.FINAL).exists()


class TraceFollower:
    """`async with TraceFollower(task_id) as trace: async for event in trace.events(): ...`

    `idle_s`: how long to wait for a live event before looking at storage again (and before
    `events()` yields None, so that a caller can send a keep-alive)."""

    def __init__(self, task_id: int, after: int = 0, idle_s: float = 1.0) -> None:
        self.task_id = task_id
        self.last_seq = after
        self.idle_s = idle_s
        self.layer = get_channel_layer()
        self.channel = ""

    async def __aenter__(self) -> TraceFollower:
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(trace_group(self.task_id), self.channel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.layer.group_discard(trace_group(self.task_id), self.channel)

    async def events(self) -> AsyncIterator[dict | None]:
        """Events in order until the trace ends; None after each idle wait with nothing new."""
        pending = await self._catch_up()
        while True:
            for event in pending:
                yield event
                if event["kind"] == "finish":
                    return
            try:
                message = await asyncio.wait_for(self.layer.receive(self.channel), self.idle_s)
            except (TimeoutError, redis.exceptions.TimeoutError):
                # redis-py can report wait_for's cancellation of a blocking read as its own read
                # timeout (asyncio's nested timeouts): that is an idle wait too, not Redis failing.
                # Storage is read next, so Redis really being away still ends the request.
                pending = await self._catch_up()
                if not pending:
                    if await _is_final(self.task_id):
                        # Ended without a finish event (cancelled before it ran), or its finish is
                        # stored by now: one last look at storage decides.
                        pending = await self._catch_up()
                        if not pending:
                            return
                    else:
                        yield None
                continue
            if message.get("type") != "trace.events":
                pending = []
                continue
            live = sorted(message["events"], key=lambda e: e["seq"])
            if live and live[0]["seq"] > self.last_seq + 1:
                pending = await self._catch_up()
            else:
                pending = self._fresh(live)

    async def _catch_up(self) -> list[dict]:
        # The buffer before the database: the writer deletes from the buffer only what it has
        # stored, so an event moving between the two is found in one of them.
        buffered = await buffered_events(self.task_id, self.last_seq)
        return self._fresh(await stored_events(self.task_id, self.last_seq) + buffered)

    def _fresh(self, events: list[dict]) -> list[dict]:
        fresh, self.last_seq = newer(events, self.last_seq)
        return fresh
