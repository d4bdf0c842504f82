"""Thin Celery tasks."""

from __future__ import annotations

import json
import os
import socket
import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from engine.messages import CallReport, CallRequest
from engine.tools import ToolSpec
from workers.executors import ToolError, executor_for
from workers.executors.base import CallContext
from workers.reporting import notify_browser, report


@shared_task(name="workers.tasks.ping")
def ping(sent_at: float) -> dict:
    """Round trip through the broker; used by health checks and tests."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "received_at": time.time(), "sent_at": sent_at}


def _worker_name(task) -> str:  # noqa: ANN001
    return f"{task.request.hostname or socket.gethostname()}/{os.getpid()}"


@shared_task(name="workers.tasks.run_tool", bind=True, acks_late=True, ignore_result=True)
def run_tool(self, request: dict) -> None:
    """Run one tool call and report its start and its result (or a structured error)."""
    req = CallRequest(**request)
    worker = _worker_name(self)
    started = CallReport(req.task_id, req.call_id, "started", worker, time.time())
    report(req.engine_id, started)
    notify_browser(started)
    tool = ToolSpec.from_dict(req.tool)
    ok, value, error = True, None, ""
    try:
        value = executor_for(tool.kind).run(tool, req.args, CallContext(req.task_id, req.call_id))
        encoded = json.dumps(value)
        if len(encoded) > settings.ASYNCLM_WORKER_MAX_RESULT_BYTES:
            ok, value, error = False, None, (
                f"result too large: {len(encoded)} bytes (limit {settings.ASYNCLM_WORKER_MAX_RESULT_BYTES})")
    except SoftTimeLimitExceeded:
        ok, value, error = False, None, f"timed out after {tool.timeout_s:g} s"
    except ToolError as exc:
        ok, value, error = False, None, str(exc)
    except (TypeError, ValueError) as exc:
        if value is not None and "JSON serializable" in str(exc):
            ok, value, error = False, None, f"result is not JSON-serialisable: {exc}"
        else:
            ok, value, error = False, None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # the tool raised: the model sees it as an error interrupt
        ok, value, error = False, None, f"{type(exc).__name__}: {exc}"
    finished = CallReport(req.task_id, req.call_id, "finished", worker, time.time(), ok=ok, result=value, error=error)
    report(req.engine_id, finished)
    notify_browser(finished)
