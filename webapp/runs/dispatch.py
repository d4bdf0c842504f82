"""The engine's dispatcher: calls go to Celery workers on the `tools` queue."""

from engine.calltable import CALL_GRACE_S
from engine.messages import CallRequest
from webapp.celery import app


def celery_task_id(task_id: int, call_id: str) -> str:
    """Deterministic, so a call can be revoked by (task, call id) alone."""
    return f"asynclm-{task_id}-{call_id}"


class CeleryDispatcher:
    def dispatch(self, request: CallRequest) -> None:
        timeout = float(request.tool.get("timeout_s", 10.0))
        special = {"agent": "workers.tasks.start_agent", "team": "workers.tasks.team_message"}.get(
            str(request.tool.get("kind")))
        if special:
            # A sub-agent's task is created, or a teammate messaged, by a worker that returns at once.
            app.send_task(special, args=[request.to_dict()], queue="tools", ignore_result=True,
                          task_id=celery_task_id(request.task_id, request.call_id), expires=timeout + CALL_GRACE_S)
            return
        # Soft limit first so the tool's error is reported; the hard limit kills a stuck child. A
        # call no worker has started once the engine has given up on it (timeout + grace) expires:
        # a dead worker's queued calls are not run minutes later for a task that moved on.
        # argsrepr: Celery would otherwise put a safe repr of the whole request (tool schema
        # included) in the headers, which doubled the message and cost the loop ~0.2 ms a call.
        # ignore_result: results come back on the engine's inbox, never through Celery's backend;
        # without it every send subscribes to the task's result channel and unsubscribes again
        # (two more Redis commands in the loop per call).
        app.send_task("workers.tasks.run_tool", args=[request.to_dict()], queue="tools", ignore_result=True,
                      task_id=celery_task_id(request.task_id, request.call_id),
                      soft_time_limit=timeout, time_limit=timeout + 1, expires=timeout + CALL_GRACE_S,
                      argsrepr=f"({request.tool.get('name')}: task {request.task_id}, call {request.call_id})",
                      kwargsrepr="{}")

    def revoke(self, task_id: int, call_ids: list[str]) -> None:
        # Queued calls are discarded by the workers; running ones finish and their late results
        # are dropped by the engine (the task is over).
        app.control.revoke([celery_task_id(task_id, c) for c in call_ids])
