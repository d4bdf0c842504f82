"""The tasks drawn together on a task's page, one lane each on a shared wall-clock axis: every
member of its team, or the task itself and the sub-agents it started."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from webapp.runs.models import Task


def lane_tasks(task: Task) -> list[Task]:
    if task.team:
        return list(Task.objects.filter(team=task.team, owner=task.owner).order_by("pk"))
    children = list(task.children.order_by("pk"))
    return [task, *children] if children else []


def lanes(task: Task) -> list[dict[str, Any]]:
    """Each lane's task, label, links and `offset_ms`: when it started, counted from the earliest
    start among them (None while it waits for an engine). A lane's events are timed from its own
    start, so the page adds the offset to place them on the shared axis."""
    tasks = lane_tasks(task)
    starts = [t.started_at for t in tasks if t.started_at is not None]
    origin = min(starts) if starts else None
    out = []
    for t in tasks:
        if t.team:
            label = t.member
        elif t.pk == task.pk:
            label = "this task"
        else:
            label = f"{t.parent_call_id} → task {t.pk}"
        out.append({
            "id": t.pk, "label": label, "status": t.status, "current": t.pk == task.pk,
            "url": reverse("task_detail", args=[t.pk]), "ws_path": f"/ws/tasks/{t.pk}/",
            "offset_ms": round((t.started_at - origin).total_seconds() * 1000, 1)
            if origin is not None and t.started_at is not None else None,
        })
    return out
