"""Creating a task and handing it to the engines; messages and cancellation for running tasks;
mode comparisons (three tasks run one after the other)."""

from __future__ import annotations

import time
import uuid

import redis
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from engine.intake import Intake
from engine.keys import inbox_stream
from engine.messages import Budgets, Control, Sampling, TaskSubmission
from webapp.core.redis import ServiceUnavailable, client
from webapp.runs import otel
from webapp.runs.agents import end_children, report_outcome
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
        instances=task.instances,
        conversation=task.conversation,
        budgets=Budgets(max_calls=task.max_calls, max_wall_s=task.max_wall_s, max_result_chars=task.max_result_chars),
    )


TASK_FIELDS = ("prompt", "model", "max_tokens", "temperature", "top_p", "seed", "mode", "max_calls", "max_wall_s")


def task_fields(cleaned: dict) -> dict:
    """The Task fields from a validated submit form (tools as their snapshot)."""
    return {**{k: cleaned[k] for k in TASK_FIELDS}, "tools": cleaned["tool_specs"],
            "instances": cleaned.get("instance_states", {})}


class TooManyTasks(Exception):
    """The user already has as many queued and running tasks as one user may."""


class RateLimited(TooManyTasks):
    """The user created tasks faster than the task-creation rate allows."""


def check_rate(owner, adding: int = 1) -> None:
    """One task-creation rate per user for the form and the API together (ASYNCLM_TASK_RATE, "N/s",
    "N/m", "N/h" or "N/d"), counted in fixed windows in the cache. (The API also throttles its
    requests, valid or not: ASYNCLM_API_TASK_RATE.)"""
    count, _, unit = settings.ASYNCLM_TASK_RATE.partition("/")
    limit, seconds = int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit[:1]]
    key = f"task-rate:{owner.pk}:{int(time.time() // seconds)}"
    cache.add(key, 0, timeout=seconds + 1)
    try:
        used = cache.incr(key, adding)
    except ValueError:  # the window ended in between
        cache.set(key, adding, timeout=seconds + 1)
        used = adding
    if used > limit:
        cache.decr(key, adding)
        raise RateLimited(f"at most {limit} tasks per {_UNIT_NAMES[unit[:1]]} may be created: try again shortly")


_UNIT_NAMES = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def check_quota(owner, adding: int = 1) -> None:
    """One user's backlog must not crowd out everyone else's: refuse beyond the per-user cap, or
    beyond the task-creation rate."""
    limit = settings.ASYNCLM_MAX_OPEN_TASKS_PER_USER
    open_tasks = Task.objects.filter(owner=owner, status__in=(Task.Status.QUEUED, Task.Status.RUNNING)).count()
    if open_tasks + adding > limit:
        raise TooManyTasks(f"you have {open_tasks} queued or running tasks and the limit is {limit} per user: "
                           "wait for some to finish (or cancel them), then submit again")
    check_rate(owner, adding)


def submit_task(owner, **fields) -> Task:
    """Store the task, then queue it. If the queue is unreachable the task is kept, marked failed
    with the reason, and ServiceUnavailable tells the caller. TooManyTasks: nothing was stored."""
    check_quota(owner)
    task = Task.objects.create(owner=owner, **fields)
    _queue(task)
    return task


def _queue(task: Task) -> None:
    try:
        Intake(client()).submit(submission_for(task), owner=task.owner_id)
    except redis.RedisError as exc:
        reason = f"Could not queue the task: Redis at {settings.REDIS_URL} is not reachable ({exc})."
        Task.objects.filter(pk=task.pk).update(status=Task.Status.FAILED, status_reason=reason)
        task.refresh_from_db()
        raise ServiceUnavailable(reason) from exc


COMPARE_MODES = (Task.Mode.SYNC, Task.Mode.SYNC_PARALLEL, Task.Mode.ASYNC)


def submit_comparison(owner, **fields) -> list[Task]:
    """The same prompt, tools, sampling seed and tool latencies under each mode. The tasks run
    one after the other (concurrent runs on 2 cores would distort each other's latencies): the
    first is queued now, each next one when its predecessor ends (on_task_final)."""
    check_quota(owner, adding=len(COMPARE_MODES))
    group = uuid.uuid4()
    # Simulated tools draw their latencies from (group, call): every mode faces the same ones.
    tools = [{**t, "config": {**t.get("config", {}), "latency_scope": str(group)}} for t in fields.pop("tools", [])]
    tasks = [Task.objects.create(owner=owner, **{**fields, "mode": mode, "tools": tools, "compare_group": group})
             for mode in COMPARE_MODES]
    try:
        _queue(tasks[0])
    except ServiceUnavailable:
        Task.objects.filter(compare_group=group, status=Task.Status.QUEUED).update(
            status=Task.Status.FAILED, status_reason="the comparison could not be queued")
        raise
    return tasks


def on_task_final(task_id: int) -> Task | None:
    """What follows a task's end (the engine calls it once the end is stored): a sub-agent's
    outcome goes to its parent, its own unfinished sub-agents are cancelled, and the next run of
    its comparison, if any, is queued; the task's trace goes to OpenTelemetry when an endpoint is
    configured. Returns that next run."""
    task = Task.objects.filter(pk=task_id).first()
    if task is None:
        return None
    otel.export(task_id)
    if task.parent_id:
        report_outcome(task)
    end_children(task, f"its parent task {task.pk} {task.status}")
    if task.compare_group is None:
        return None
    following = Task.objects.filter(compare_group=task.compare_group, pk__gt=task_id).order_by("pk").first()
    if following is None or following.status != Task.Status.QUEUED:
        return None
    try:
        _queue(following)
    except ServiceUnavailable:
        return None  # marked failed with the reason
    return following


def send_message(task: Task, text: str) -> str:
    """A person's message for a running task, injected by its engine like a tool result."""
    if task.status != Task.Status.RUNNING:
        raise TaskNotRunning(f"the task is {task.status}: messages go only to a running task")
    _control(task, Control(task.pk, "message", text=text))
    return "message sent; the engine injects it at the next token boundary outside a call block"


class TaskNotRunning(Exception):
    pass


def _control(task: Task, message: Control) -> None:
    try:
        client().xadd(inbox_stream(task.engine_id), {"c": message.to_json()})
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"Could not reach the engine: Redis at {settings.REDIS_URL} is not reachable "
                                 f"({exc}).") from exc


def cancel_task(task: Task, reason: str = "cancelled by the user") -> str:
    """Cancel a task; returns what happened. A queued task is cancelled here; a running one is
    cancelled by its engine (which revokes its queued calls) on a control message."""
    if task.is_final:
        return f"the task had already {task.status}"
    if task.team:
        # A team stops together: the other members are cancelled too.
        for mate in Task.objects.filter(team=task.team).exclude(pk=task.pk).exclude(status__in=Task.FINAL):
            _cancel_one(mate, f"team member {task.member or task.pk} was cancelled")
    return _cancel_one(task, reason)


def _cancel_one(task: Task, reason: str) -> str:
    if task.compare_group:
        # Cancelling one run of a comparison cancels the runs that have not started yet.
        Task.objects.filter(compare_group=task.compare_group, pk__gt=task.pk, status=Task.Status.QUEUED).update(
            status=Task.Status.CANCELLED, status_reason=f"comparison cancelled at task {task.pk}",
            finished_at=timezone.now())
    if Task.objects.filter(pk=task.pk, status=Task.Status.QUEUED).update(
            status=Task.Status.CANCELLED, status_reason=reason, finished_at=timezone.now()):
        if task.parent_id:  # a sub-agent that never ran: its parent's call gets an error result
            task.refresh_from_db()
            report_outcome(task)
        return "cancelled before it started"
    task.refresh_from_db()
    if task.is_final:
        return f"the task had already {task.status}"
    _control(task, Control(task.pk, "cancel", reason))
    return "cancel requested; the engine stops the task at its next step"
