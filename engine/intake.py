"""Durable task intake: per-user queues, fed round-robin into a Redis stream that engines read
through a consumer group.

A submission waits in its owner's list (`asynclm:intake:queue:<owner>`, the owners in turn in
`asynclm:intake:owners`). An engine with free slots first moves that many submissions into the
stream, one owner at a time in turn (a Lua script, so a submission is never in both places or in
neither), then reads them: one user's 100 queued tasks delay another user's first task by at
most one task. An entry stays pending (owned by the engine that read it) until that engine
acknowledges it at the end of the task, so the entries of an engine that died can be claimed by
another.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from engine.keys import INTAKE_GROUP, INTAKE_STREAM
from engine.messages import MessageError, TaskSubmission

log = logging.getLogger(__name__)

# KEYS: the owner's queue, the rotation of owners with queued work. ARGV: owner, message.
_QUEUE = """
redis.call('RPUSH', KEYS[1], ARGV[2])
if not redis.call('LPOS', KEYS[2], ARGV[1]) then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return redis.call('LLEN', KEYS[1])
"""
# KEYS: the rotation, the stream. ARGV: the queues' key prefix, how many to move. Each turn takes
# the next owner (to the back of the rotation) and moves the oldest of its submissions; an owner
# whose queue is empty leaves the rotation. At most count + owners turns.
_FEED = """
local moved = 0
while moved < tonumber(ARGV[2]) and redis.call('LLEN', KEYS[1]) > 0 do
  local owner = redis.call('LMOVE', KEYS[1], KEYS[1], 'LEFT', 'RIGHT')
  local queue = ARGV[1] .. owner
  local msg = redis.call('LPOP', queue)
  if msg then
    redis.call('XADD', KEYS[2], '*', 'msg', msg)
    moved = moved + 1
  end
  if redis.call('LLEN', queue) == 0 then redis.call('LREM', KEYS[1], -1, owner) end
end
return moved
"""


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
        self.queue_prefix = f"{stream}:queue:"  # + owner: submissions not yet fed to the stream
        self.owners = f"{stream}:owners"  # owners with queued submissions, in round-robin order
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

    def submit(self, sub: TaskSubmission, owner: str | int = "") -> int:
        """Queue a submission behind its owner's earlier ones; returns how many that owner has
        queued (not yet taken by an engine), this one included."""
        self.ensure_group()
        length: Any = self.r.eval(_QUEUE, 2, f"{self.queue_prefix}{owner}", self.owners, str(owner), sub.to_json())
        return int(length)

    def feed(self, count: int) -> int:
        """Move up to `count` queued submissions into the stream, owners in turn; returns how many."""
        moved: Any = self.r.eval(_FEED, 2, self.owners, self.stream, self.queue_prefix, count)
        return int(moved)

    def queued(self) -> int:
        """Submissions waiting in the owners' queues (not yet in the stream)."""
        owners: Any = self.r.lrange(self.owners, 0, -1)
        return sum(int(self.r.llen(f"{self.queue_prefix}{_s(o)}")) for o in owners)

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
        """Up to `count` submissions for this consumer: what is already in the stream first (fed
        by another engine that had fewer free slots by the time it read), then fresh ones fed
        from the owners' queues, so the stream never holds more than the engines can take."""
        self.ensure_group()
        claimed = self._read(consumer, count, None)
        if len(claimed) < count and self.feed(count - len(claimed)):
            claimed += self._read(consumer, count - len(claimed), None)
        if not claimed and block_ms:
            claimed = self._read(consumer, count, block_ms)
        return claimed

    def _read(self, consumer: str, count: int, block_ms: int | None) -> list[Claimed]:
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

    def owner(self, entry_id: str) -> str | None:
        """The consumer an entry is pending to (None: acknowledged, or unknown)."""
        try:
            pending: Any = self.r.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        except redis.ResponseError as exc:
            self._regroup(exc)
            return None
        return _s(pending[0]["consumer"]) if pending else None

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
            claimed += self._claim(consumer, [item["message_id"]], min_idle_ms, previous_owner=owner)
        return claimed

    def orphans(self, consumer: str, held: set[str], min_idle_ms: int = 2000) -> list[Claimed]:
        """Entries pending to this consumer that it does not hold: Redis delivered them, but the
        reply was lost (the connection dropped between the read and its answer, as when Redis
        stops). No one else would take them, since their owner is alive; the owner takes them
        up again (XCLAIM to itself, which also resets their idle time)."""
        self.ensure_group()
        try:
            pending: Any = self.r.xpending_range(self.stream, self.group, min="-", max="+", count=100,
                                                 consumername=consumer, idle=min_idle_ms)
        except redis.ResponseError as exc:
            self._regroup(exc)
            return []
        lost = [item["message_id"] for item in pending if _s(item["message_id"]) not in held]
        return self._claim(consumer, lost, min_idle_ms) if lost else []

    def _claim(self, consumer: str, ids: list[Any], min_idle_ms: int,
               previous_owner: str | None = None) -> list[Claimed]:
        """XCLAIM the entries for `consumer`; one deleted from the stream while pending is acknowledged."""
        claimed: list[Claimed] = []
        entries: Any = self.r.xclaim(self.stream, self.group, consumer, min_idle_ms, ids)
        for eid, fields in entries:
            if fields is None:
                self.r.xack(self.stream, self.group, eid)
                continue
            claimed.append(self._decode(eid, fields, previous_owner))
        return claimed


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
