"""A worker's report outlives a Redis restart instead of being lost."""

import threading
import time

import redis

from engine.keys import inbox_stream
from engine.messages import CallReport
from webapp.core.processes import PrivateRedis, free_port
from workers.reporting import report


def test_it_keeps_a_finished_calls_report_until_redis_answers_again(tmp_path):
    port = free_port()
    server = PrivateRedis(f"redis://127.0.0.1:{port}/0", tmp_path)
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=0.5)
    rep = CallReport(7, "c1", "finished", "w/1", time.time(), ok=True, result={"v": 1})
    threading.Timer(1.5, server.ensure).start()  # Redis comes up while the worker is retrying
    try:
        started = time.monotonic()
        report("engine-x", rep, patience_s=20, client=client)
        assert time.monotonic() - started >= 1.0  # it waited for Redis rather than failing
        ((_, fields),) = client.xrange(inbox_stream("engine-x"))
        assert CallReport.from_json(fields[b"r"]) == rep
    finally:
        server.stop()


def test_it_gives_up_after_its_patience_with_the_redis_error(tmp_path):
    client = redis.Redis(port=free_port(), socket_timeout=0.5, socket_connect_timeout=0.2)
    rep = CallReport(7, "c1", "finished", "w/1", time.time(), ok=True, result=1)
    started = time.monotonic()
    try:
        report("engine-x", rep, patience_s=1.0, client=client)
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("a report that never reached Redis must not pass silently")
    assert 0.5 <= time.monotonic() - started < 1.0 + 5  # its patience, plus at most the attempt under way
