"""The engine's dispatcher: calls go to Celery workers on the `tools` queue."""

from __future__ import annotations

from typing import Any

from engine.calltable import CALL_GRACE_S
from engine.messages import CallRequest
from webapp.celery import app
from webapp.runs.toolqueue import ToolQueue

RUN_TOOL = "workers.tasks.run_tool"
SPECIAL = {"agent": "workers.tasks.start_agent", "team": "workers.tasks.team_message"}


def celery_task_id(task_id: int, call_id: str) -> str:
    """Deterministic, so a call can be revoked by (task, call id) alone."""
    return f"asynclm-{task_id}-{call_id}"


class CeleryDispatcher:
    def __init__(self) -> None:
        self.queue = ToolQueue(app)

    def dispatch(self, request: CallRequest) -> None:
        """Send one call; raises if it could not be sent."""
        for _, exc in self.dispatch_all([request]):
            raise exc

    def dispatch_all(self, requests: list[CallRequest]) -> list[tuple[CallRequest, Exception]]:
        """Send calls (those one engine step wrote: sync_parallel's batch) in one message to the
        broker; returns the ones that could not be sent, with why."""
        failed: list[tuple[CallRequest, Exception]] = []
        batch: list[CallRequest] = []
        for request in requests:
            special = SPECIAL.get(str(request.tool.get("kind")))
            if not special:
                batch.append(request)
                continue
            # A sub-agent's task is created, or a teammate messaged, by a worker that returns at once.
            try:
                app.send_task(special, args=[request.to_dict()], queue="tools", ignore_result=True,
                              task_id=celery_task_id(request.task_id, request.call_id),
                              expires=_timeout(request) + CALL_GRACE_S)
            except Exception as exc:
                failed.append((request, exc))
        try:
            self.queue.push([self._message(request) for request in batch])
        except Exception as exc:
            failed += [(request, exc) for request in batch]
        return failed

    def _message(self, request: CallRequest) -> dict[str, Any]:
        timeout = _timeout(request)
        # Soft limit first so the tool's error is reported; the hard limit kills a stuck child. A
        # call no worker has started once the engine has given up on it (timeout + grace) expires:
        # a dead worker's queued calls are not run minutes later for a task that moved on.
        # argsrepr: Celery would otherwise put a safe repr of the whole request (tool schema
        # included) in the headers. Results come back on the engine's inbox, never through
        # Celery's result backend (ignore_result).
        return self.queue.message(
            RUN_TOOL, celery_task_id(request.task_id, request.call_id), [request.to_dict()],
            expires_s=timeout + CALL_GRACE_S, time_limit=timeout + 1, soft_time_limit=timeout,
            argsrepr=f"({request.tool.get('name')}: task {request.task_id}, call {request.call_id})",
        )

    def revoke(self, task_id: int, call_ids: list[str]) -> None:
        # Queued calls are discarded by the workers; running ones finish and their late results
        # are dropped by the engine (the task is over).
        app.control.revoke([celery_task_id(task_id, c) for c in call_ids])


def _timeout(request: CallRequest) -> float:
    return float(request.tool.get("timeout_s", 10.0))
