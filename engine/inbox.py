"""An engine's inbox: what other processes send to the tasks it holds, on one Redis stream per
engine (`asynclm:inbox:<engine id>`): workers' call reports (`r`: started, finished with a result
or an error) and the web's control messages (`c`: a person's message, a cancellation)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import redis

from engine.keys import inbox_stream
from engine.messages import CallReport, Control, MessageError

log = logging.getLogger(__name__)


def late_reports(client: redis.Redis, engine_id: str, task_id: int) -> dict[str, CallReport]:
    """Results of a task's calls that reached an engine's inbox (one that died, say): by call id."""
    entries: Any = client.xrange(inbox_stream(engine_id))
    found: dict[str, CallReport] = {}
    for _, fields in entries:
        try:
            rep = CallReport.from_json(fields[b"r"]) if b"r" in fields else None
        except MessageError:
            continue
        if rep is not None and rep.task_id == task_id and rep.phase == "finished":
            found[rep.call_id] = rep
    return found


class Inbox:
    """Reads this engine's inbox stream on a thread and wakes the main loop. A control message
    is deleted once handed over; a call's report stays until its task's end is stored
    (`forget`), so that if this engine dies first, the engine that resumes the task finds the
    results that reached it. The stream outlives a reader that restarts."""

    def __init__(self, client: redis.Redis, engine_id: str, wake: threading.Event) -> None:
        self.r = client
        self.key = inbox_stream(engine_id)
        self.wake = wake
        self.inbox: queue.SimpleQueue[tuple[CallReport | Control, float]] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self._kept: dict[int, list[bytes]] = {}  # task id -> its reports' entries
        self._kept_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="inbox", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = "0"
        while not self.stopping.is_set():
            try:
                reply: Any = self.r.xread({self.key: last}, count=100, block=500)
            except redis.RedisError as exc:
                log.warning("reading %s failed: %s", self.key, exc)
                self.stopping.wait(1.0)
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if not self._hand_over(entry_id, fields):
                        self._delete([entry_id])
                self.wake.set()

    def _hand_over(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        """Queue one entry for the main loop; True if the entry is a report to keep for now."""
        try:
            if b"c" in fields:
                self.inbox.put((Control.from_json(fields[b"c"]), time.time()))
                return False
            rep = CallReport.from_json(fields[b"r"])
        except (MessageError, KeyError) as exc:
            log.error("dropping undecodable message %s: %s", entry_id, exc)
            return False
        self.inbox.put((rep, time.time()))
        with self._kept_lock:
            self._kept.setdefault(rep.task_id, []).append(entry_id)
        return True

    def _delete(self, entry_ids: list[bytes]) -> None:
        try:
            self.r.xdel(self.key, *entry_ids)
        except redis.RedisError as exc:  # handed over already: it only stays in the stream (which expires)
            log.warning("could not delete %d entries from %s: %s", len(entry_ids), self.key, exc)

    def forget(self, task_id: int) -> None:
        with self._kept_lock:
            kept = self._kept.pop(task_id, [])
        if kept:
            self._delete(kept)

    def drain(self) -> list[tuple[CallReport | Control, float]]:
        """Reports with the wall time they reached this process."""
        out = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.stopping.set()
        self._thread.join(2.0)
