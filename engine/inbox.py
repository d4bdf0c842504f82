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


class Inbox:
    """Reads this engine's inbox stream on a thread and wakes the main loop. Entries are
    deleted once handed over; the stream outlives a reader that restarts."""

    def __init__(self, client: redis.Redis, engine_id: str, wake: threading.Event) -> None:
        self.r = client
        self.key = inbox_stream(engine_id)
        self.wake = wake
        self.inbox: queue.SimpleQueue[tuple[CallReport | Control, float]] = queue.SimpleQueue()
        self.stopping = threading.Event()
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
                    try:
                        if b"c" in fields:
                            self.inbox.put((Control.from_json(fields[b"c"]), time.time()))
                        else:
                            self.inbox.put((CallReport.from_json(fields[b"r"]), time.time()))
                    except (MessageError, KeyError) as exc:
                        log.error("dropping undecodable message %s: %s", entry_id, exc)
                    try:
                        self.r.xdel(self.key, entry_id)
                    except redis.RedisError as exc:  # handed over already: it only stays in the stream
                        log.warning("could not delete %s from %s: %s", entry_id, self.key, exc)
                self.wake.set()

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
