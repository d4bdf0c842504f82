"""An engine's inbox on the real Redis: a call's report stays until its task's end is stored, so
that an engine resuming the task after this one died still finds the result."""

import threading
import time

from engine.inbox import Inbox, late_reports
from engine.keys import inbox_stream
from engine.messages import CallReport, Control
from tests.helpers import wait_for


def test_it_keeps_reports_until_the_task_is_forgotten_and_drops_control_messages_at_once(redis_client):
    key = inbox_stream("engine-x")
    report = CallReport(7, "c1", "finished", "w/1", time.time(), ok=True, result={"v": 1})
    redis_client.xadd(key, {"r": report.to_json()})
    redis_client.xadd(key, {"c": Control(7, "message", text="hi").to_json()})
    inbox = Inbox(redis_client, "engine-x", threading.Event())
    try:
        got = wait_for(lambda: inbox.drain() or None, 5, "the inbox to be read")
        assert [type(m) for m, _ in got] in ([CallReport, Control], [CallReport])
        wait_for(lambda: redis_client.xlen(key) == 1, 5, "the control message to be deleted")
        assert late_reports(redis_client, "engine-x", 7) == {"c1": report}  # what a new engine would find
        assert late_reports(redis_client, "engine-x", 8) == {}
        inbox.forget(7)
        assert redis_client.xlen(key) == 0
    finally:
        inbox.close()
