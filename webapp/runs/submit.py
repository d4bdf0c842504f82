"""Creating a task and handing it to the engines."""

from __future__ import annotations

import redis
from django.conf import settings
from django.utils import timezone

from engine.intake import Intake
from engine.keys import results_stream
from engine.messages import Budgets, Control, Sampling, TaskSubmission
from webapp.core.redis import ServiceUnavailable, client
from webapp.runs.models import Task


def submission_for(task: Task) -> TaskSubmission:
    return TaskSubmission(
        task_id=task.pk,
        model=task.model,
        prompt=task.prompt,
        max_tokens=task.max_tokens,
        submitted_at=task.created_at.timestamp(),
        sampling=Sampling(temperature=task.temperature, top_p=task.top_p, seed=task.seed),
        mode=task.mode,
        tools=task.tools,
        budgets=Budgets(max_calls=task.max_calls, max_wall_s=task.max_wall_s, max_result_chars=task.max_result_chars),
    )


TASK_FIELDS = ("prompt", "model", "max_tokens", "temperature", "top_p", "seed", "mode", "max_calls", "max_wall_s")


def task_fields(cleaned: dict) -> dict:
    """The Task fields from a validated submit form (tools as their snapshot)."""
    return {**{k: cleaned[k] for k in TASK_FIELDS}, "tools": cleaned["tool_specs"]}


def submit_task(owner, **fields) -> Task:  # noqa: ANN001
    """Store the task, then queue it. If the queue is unreachable the task is kept, marked failed
    with the reason, and ServiceUnavailable tells the caller."""
    task = Task.objects.create(owner=owner, **fields)
    try:
        Intake(client()).submit(submission_for(task))
    except redis.RedisError as exc:
        reason = f"Could not queue the task: Redis at {settings.REDIS_URL} is not reachable ({exc})."
        Task.objects.filter(pk=task.pk).update(status=Task.Status.FAILED, status_reason=reason)
        task.refresh_from_db()
        raise ServiceUnavailable(reason) from exc
    return task


def cancel_task(task: Task, reason: str = "cancelled by the user") -> str:
    """Cancel a task; returns what happened. A queued task is cancelled here; a running one is
    cancelled by its engine (which revokes its queued calls) on a control message."""
    if task.is_final:
        return f"the task had already {task.status}"
    if Task.objects.filter(pk=task.pk, status=Task.Status.QUEUED).update(
            status=Task.Status.CANCELLED, status_reason=reason, finished_at=timezone.now()):
        return "cancelled before it started"
    task.refresh_from_db()
    if task.is_final:
        return f"the task had already {task.status}"
    try:
        client().xadd(results_stream(task.engine_id), {"c": Control(task.pk, "cancel", reason).to_json()})
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"Could not reach the engine: Redis at {settings.REDIS_URL} is not reachable "
                                 f"({exc}).") from exc
    return "cancel requested; the engine stops the task at its next step"
