"""Thin Celery tasks."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from engine.messages import CallReport, CallRequest
from engine.tools import ToolSpec
from workers.executors import StatefulExecutor, ToolError, TransientToolError, executor_for
from workers.executors.base import CallContext, CallFailed, planned_latency_ms
from workers.instances import run_on_instance
from workers.reporting import notify_browser, report, worker_redis

log = logging.getLogger(__name__)

MAX_TRANSIENT_RETRIES = 2


@shared_task(name="workers.tasks.ping")
def ping(sent_at: float) -> dict:
    """Round trip through the broker; used by health checks and tests."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "received_at": time.time(), "sent_at": sent_at}


@shared_task(name="workers.tasks.start_agent", acks_late=True)
def start_agent(request: dict) -> None:
    """An `agent` tool's call: create and queue the sub-agent's task (it reports when it ends)."""
    from webapp.runs.agents import start_child

    start_child(CallRequest(**request))


@shared_task(name="workers.tasks.team_message")
def team_message(request: dict) -> None:
    """A team member's send_message call: deliver it to the teammate, report to the sender."""
    from webapp.runs.teams import deliver_message

    deliver_message(CallRequest(**request))


def _worker_name(task) -> str:
    return f"{task.request.hostname or socket.gethostname()}/{os.getpid()}"


def execute(tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> Any:
    """Validate, run and check one call; every failure becomes CallFailed(kind, short message).
    Calls of stateful tools run on their instance's stored state, once per call id."""
    try:
        executor = executor_for(tool.kind)
    except ToolError as exc:
        raise CallFailed(exc.kind, str(exc)) from None
    if not isinstance(executor, StatefulExecutor):
        return _checked(tool, args, ctx, lambda: (executor.run(tool, args, ctx), None))[0]
    planned = planned_latency_ms(tool.config, ctx.call_id, args)
    if planned:
        time.sleep(planned / 1000)  # a benchmark's latency for this call; BFCL's classes answer at once
    return run_on_instance(
        worker_redis(), ctx.task_id, executor.instance_name(tool), ctx.call_id, ctx.order, tool.timeout_s + 2,
        lambda state: _checked(tool, args, ctx, lambda: executor.run_stateful(tool, args, state)),
    )


def _checked(
    tool: ToolSpec, args: dict[str, Any], ctx: CallContext, run: Callable[[], tuple[Any, Any]]
) -> tuple[Any, Any]:
    try:
        tool.validate(args)
    except ValueError as exc:
        raise CallFailed("invalid_arguments", str(exc)) from None  # never executed
    try:
        value, state = run()
    except SoftTimeLimitExceeded:
        raise CallFailed("timeout", f"timed out after {tool.timeout_s:g} s") from None
    except TransientToolError:
        raise
    except ToolError as exc:
        raise CallFailed(exc.kind, str(exc)) from None
    except Exception as exc:  # the tool raised: short message for the model, traceback for the log
        log.exception("tool %s raised (task %s, call %s)", tool.name, ctx.task_id, ctx.call_id)
        raise CallFailed("exception", f"{type(exc).__name__}: {exc}") from None
    try:
        encoded = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise CallFailed("not_json", f"result is not JSON-serialisable: {exc}") from None
    if len(encoded) > settings.ASYNCLM_WORKER_MAX_RESULT_BYTES:
        raise CallFailed("too_large",
                         f"result too large: {len(encoded)} bytes (limit {settings.ASYNCLM_WORKER_MAX_RESULT_BYTES})")
    return value, state


@shared_task(name="workers.tasks.run_tool", bind=True, acks_late=True, ignore_result=True)
def run_tool(self, request: dict) -> None:
    """Run one tool call and report its start and its result (or a structured error)."""
    req = CallRequest(**request)
    worker = _worker_name(self)
    if self.request.retries == 0:
        started = CallReport(req.task_id, req.call_id, "started", worker, time.time())
        report(req.engine_id, started)
        notify_browser(started)
    tool = ToolSpec.from_dict(req.tool)
    ok, value, error, kind = True, None, "", ""
    try:
        value = execute(tool, req.args, CallContext(req.task_id, req.call_id, req.order))
    except TransientToolError as exc:
        if self.request.retries < MAX_TRANSIENT_RETRIES:
            # Only failures marked transient are retried; the engine's deadline still bounds the wait.
            raise self.retry(countdown=0.2 * 2**self.request.retries, max_retries=MAX_TRANSIENT_RETRIES) from exc
        ok, error, kind = False, f"{exc} (after {MAX_TRANSIENT_RETRIES} retries)", exc.kind
    except CallFailed as exc:
        ok, error, kind = False, str(exc), exc.kind
    finished = CallReport(req.task_id, req.call_id, "finished", worker, time.time(), ok=ok, result=value,
                          error=error, error_type=kind)
    report(req.engine_id, finished)
    notify_browser(finished)
