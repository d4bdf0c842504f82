"""The `tools` queue, written without Celery's per-message set-up.

`app.send_task` costs the engine's loop 0.3 ms a call when warm and 1.2-1.7 ms when the loop comes
to it between tokens (measured): on every message kombu builds a new Redis client (its response
callbacks dict alone is ~170 insertions), acquires a producer from a pool, checks the queue's
declaration and wraps the publish in its retry machinery. The message itself is cheap. This
module builds it with the same Celery and kombu functions (`as_task_v2` for the task protocol's
headers, the channel's `prepare_message` and `_inplace_augment_message` for the Redis envelope),
so a worker cannot tell the difference, and pushes it on one long-lived client: every call a
step wrote goes to the broker in one `LPUSH`. Those functions build the envelope of a task's
first message only (0.48 ms p50 between tokens, measured); the next ones copy it and fill in what
differs from call to call (ids, limits, expiry, body): 0.27 ms. The broker is Redis
(the settings accept nothing else); `tests/unit/test_dispatch.py` compares both kinds of message
with `send_task`'s, so a Celery or kombu upgrade that changes the format fails there first.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta
from typing import Any

import redis
from celery import Celery
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as envelope_json


class ToolQueue:
    def __init__(self, app: Celery, queue: str = "tools") -> None:
        self.app = app
        self.queue = queue
        self._channel: Any = None
        # (task name, pid): the envelope of the first message and its body's embedded options
        self._templates: dict[tuple[str, int], tuple[dict[str, Any], Any]] = {}

    @property
    def channel(self) -> Any:
        """The broker connection's channel, opened on first use (kombu's Redis virtual channel)."""
        if self._channel is None:
            self._channel = self.app.connection_for_write().default_channel
        return self._channel

    def message(self, name: str, task_id: str, args: list[Any], *, expires_s: float, time_limit: float,
                soft_time_limit: float, argsrepr: str) -> dict[str, Any]:
        """The envelope kombu's Redis transport would push for `send_task(name, args, ...)` with
        `queue`, `ignore_result=True` and these limits."""
        # The origin header names this process (its pid): a template made before a fork is not reused.
        found = self._templates.get((name, os.getpid()))
        if found is None:
            message, embed = self.built(name, task_id, args, expires_s=expires_s, time_limit=time_limit,
                                        soft_time_limit=soft_time_limit, argsrepr=argsrepr)
            self._templates[(name, os.getpid())] = (message, embed)
            return message
        template, embed = found
        expires = (datetime.now(self.app.timezone) + timedelta(seconds=expires_s)).isoformat()
        ids = {"id": task_id, "root_id": task_id}
        body, _ = self.channel.encode_body(envelope_json([args, {}, embed]), template["properties"]["body_encoding"])
        return {
            **template,
            "body": body,
            "headers": {**template["headers"], **ids, "expires": expires, "timelimit": [time_limit, soft_time_limit],
                        "argsrepr": argsrepr},
            "properties": {**template["properties"], "correlation_id": task_id, "argsrepr": argsrepr,
                           "expiration": str(int(expires_s * 1000)), "delivery_tag": str(uuid.uuid4())},
        }

    def built(self, name: str, task_id: str, args: list[Any], *, expires_s: float, time_limit: float,
              soft_time_limit: float, argsrepr: str) -> tuple[dict[str, Any], Any]:
        """The envelope built by Celery's and kombu's own functions (what `message` copies), and the
        options the task protocol embeds in the body after the arguments."""
        headers, properties, body, _ = self.app.amqp.as_task_v2(
            task_id, name, args, {}, expires=expires_s, time_limit=time_limit, soft_time_limit=soft_time_limit,
            ignore_result=True, argsrepr=argsrepr, kwargsrepr="{}", reply_to=self.app.thread_oid,
        )
        content_type, encoding, data = serialize(body, serializer=self.app.conf.task_serializer)
        # What send_task adds: its leftover options (the reprs) and the queue's delivery mode (persistent).
        properties = {**properties, "argsrepr": argsrepr, "kwargsrepr": "{}", "delivery_mode": 2,
                      "expiration": str(int(expires_s * 1000))}
        channel = self.channel
        message: dict[str, Any] = channel.prepare_message(data, 0, content_type, encoding, headers, properties)
        channel._inplace_augment_message(message, "", self.queue)  # anonymous exchange: straight to the queue
        return message, body[2]

    def push(self, messages: list[dict[str, Any]]) -> None:
        """One round trip for them all, in order (a worker pops the first one first). A connection
        that broke since the last push (Redis restarted) is replaced once by the client's pool."""
        if not messages:
            return
        encoded = [envelope_json(m) for m in messages]
        client = self.channel.client
        try:
            client.lpush(self.queue, *encoded)
        except redis.ConnectionError:
            client.lpush(self.queue, *encoded)
