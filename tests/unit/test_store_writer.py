"""The engine's store writer: writes in the order handed over, off the decode loop, and a write
that fails is retried once, then logged, without stopping the writes after it."""

import logging
import threading

from engine.storewriter import StoreWriter


def test_it_writes_in_order_on_its_own_thread_and_close_waits_for_everything():
    writer, done, threads = StoreWriter(), [], set()

    def write(n):
        def run():
            threads.add(threading.current_thread().name)
            done.append(n)
        return run

    for n in range(50):
        writer.submit(write(n), f"batch {n}")
    writer.close()
    assert done == list(range(50)) and threads == {"store-writer"}


def test_a_failed_write_is_retried_once_then_logged_and_later_writes_go_on(monkeypatch, caplog):
    monkeypatch.setattr("engine.proc.time.sleep", lambda s: None)
    writer, attempts, done = StoreWriter(), {"flaky": 0, "broken": 0}, []

    def failing(name, failures):
        def run():
            attempts[name] += 1
            if attempts[name] <= failures:
                raise RuntimeError(f"{name} is down")
            done.append(name)
        return run

    with caplog.at_level(logging.ERROR, logger="engine.proc"):
        writer.submit(failing("flaky", 1), "flaky batch")
        writer.submit(failing("broken", 5), "broken batch")
        writer.submit(lambda: done.append("after"), "last batch")
        writer.close()
    assert attempts == {"flaky": 2, "broken": 2} and done == ["flaky", "after"]
    assert "could not store broken batch" in caplog.text and "flaky" not in caplog.text
