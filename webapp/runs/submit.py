"""Creating a task and handing it to the engines."""

from __future__ import annotations

import redis
from django.conf import settings

from engine.intake import Intake
from engine.messages import Budgets, Sampling, TaskSubmission
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
