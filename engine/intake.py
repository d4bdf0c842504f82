"""Durable task intake: a Redis stream read through a consumer group.

An entry stays pending (owned by the engine that read it) until that engine acknowledges it at
the end of the task, so the entries of an engine that died can be claimed by another.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from engine.keys import INTAKE_GROUP, INTAKE_STREAM
from engine.messages import MessageError, TaskSubmission

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    entry_id: str
    submission: TaskSubmission | None  # None: undecodable entry (acknowledged and dropped)
    previous_owner: str | None = None
    error: str = ""


class Intake:
    def __init__(self, client: redis.Redis, stream: str = INTAKE_STREAM, group: str = INTAKE_GROUP) -> None:
        self.r = client
        self.stream = stream
        self.group = group
        self._group_ready = False

    def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From id 0: entries submitted before any engine ever started are not skipped.
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def submit(self, sub: TaskSubmission) -> str:
        self.ensure_group()
        entry_id: Any = self.r.xadd(self.stream, {"msg": sub.to_json()})
        return _s(entry_id)

    def _decode(self, entry_id: bytes | str, fields: dict[Any, Any], previous_owner: str | None = None) -> Claimed:
        raw = fields.get(b"msg") or fields.get("msg")
        try:
            sub = TaskSubmission.from_json(raw or b"")
        except MessageError as exc:
            log.error("dropping undecodable intake entry %s: %s", _s(entry_id), exc)
            return Claimed(_s(entry_id), None, previous_owner, str(exc))
        return Claimed(_s(entry_id), sub, previous_owner)

    def _regroup(self, exc: redis.ResponseError) -> None:
        """A Redis that restarted without its data has no group: make it again (or re-raise)."""
        if "NOGROUP" not in str(exc):
            raise exc
        self._group_ready = False
        self.ensure_group()

    def claim(self, consumer: str, count: int = 1, block_ms: int | None = None) -> list[Claimed]:
        self.ensure_group()
        try:
            reply: Any = self.r.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        except redis.ResponseError as exc:
            self._regroup(exc)
            return []
        return [self._decode(eid, fields) for _, entries in (reply or []) for eid, fields in entries]

    def done(self, entry_id: str) -> None:
        """Acknowledge and delete: finished entries must not accumulate in the stream."""
        pipe = self.r.pipeline()
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()

    def reclaim(self, consumer: str, alive: set[str], min_idle_ms: int = 2000) -> list[Claimed]:
        """Take over entries held by consumers that are no longer alive."""
        self.ensure_group()
        claimed: list[Claimed] = []
        try:
            pending: Any = self.r.xpending_range(self.stream, self.group, min="-", max="+", count=100)
        except redis.ResponseError as exc:
            self._regroup(exc)
            return []
        for item in pending:
            owner = _s(item["consumer"])
            if owner == consumer or owner in alive:
                continue
            entries: Any = self.r.xclaim(self.stream, self.group, consumer, min_idle_ms, [item["message_id"]])
            for eid, fields in entries:
                if fields is None:  # deleted from the stream while pending
                    self.r.xack(self.stream, self.group, eid)
                    continue
                claimed.append(self._decode(eid, fields, previous_owner=owner))
        return claimed


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
