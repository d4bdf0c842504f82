"""The engine's database writes, off the decode loop's thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class StoreWriter:
    """Writes trace batches and task ends on a thread of its own, in the order they were handed
    over, so the decode loop never waits for the database (a batch cost 5-25 ms of the loop on
    SQLite, about 4% of a 10 ms token). A write that fails is retried (after 1 s, then twice as
    long each time, at most 30 s apart) up to `attempts` times in all, then logged. Later writes
    wait meanwhile, so the database sees everything in order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], None], str, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[], None], what: str, attempts: int = 2) -> None:
        self._queue.put((write, what, attempts))

    def close(self, timeout: float = 30.0) -> None:
        """Write everything handed over, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the store writer did not finish within %s s: trace events may be lost", timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            write, what, attempts = item
            for attempt in range(1, attempts + 1):
                try:
                    write()
                    break
                except Exception:
                    if attempt == attempts:
                        log.exception("could not store %s (%d attempts)", what, attempts)
                    else:
                        log.warning("storing %s failed (attempt %d of %d); retrying", what, attempt, attempts)
                        time.sleep(min(30.0, 2.0 ** (attempt - 1)))
