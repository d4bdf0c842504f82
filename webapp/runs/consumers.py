"""Live trace of one task over a websocket.

On connect: join the task's group first, then send what is stored (database, then the Redis
catch-up stream for events not yet flushed), then forward live events, dropping any already
sent. The client passes `?after=<seq>` when it reconnects, so nothing is sent twice.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from engine.messages import trace_group
from webapp.runs.follow import buffered_events, newer, stored_events
from webapp.runs.models import Task


@database_sync_to_async
def owned_task(user, pk: int) -> Task | None:
    return Task.objects.filter(pk=pk, owner=user).first()


class TaskTraceConsumer(AsyncJsonWebsocketConsumer):
    last_seq = 0

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        task = await owned_task(user, self.scope["url_route"]["kwargs"]["pk"])
        if task is None:
            await self.close(code=4404)
            return
        self.task_id = task.pk
        self.group = trace_group(task.pk)
        try:
            self.last_seq = max(0, int(parse_qs(self.scope["query_string"].decode()).get("after", ["0"])[0]))
        except ValueError:
            self.last_seq = 0
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.forward(await stored_events(task.pk, self.last_seq))
        await self.forward(await buffered_events(task.pk, self.last_seq))

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def trace_events(self, message):
        await self.forward(message["events"])

    async def call_report(self, message):
        """Straight from a worker: live call status (the stored trace gets it via the engine)."""
        await self.send_json({"type": "call", "report": message["report"]})

    async def forward(self, events: list[dict]) -> None:
        fresh, self.last_seq = newer(events, self.last_seq)
        if fresh:
            await self.send_json({"type": "events", "events": fresh})
