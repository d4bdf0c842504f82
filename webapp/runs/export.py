"""A task as JSON: for the API and for the trace download on the task page."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils import timezone

from webapp.runs.models import Task

CALL_FIELDS = ("call_id", "tool", "arguments", "status", "worker", "decoded_ms", "dispatched_ms", "started_ms",
               "finished_ms", "injected_ms", "result", "error")


def task_document(task: Task, calls: bool = True) -> dict[str, Any]:
    doc = {
        "id": task.pk,
        "url": reverse("task_detail", args=[task.pk]),
        "status": task.status,
        "status_reason": task.status_reason,
        "mode": task.mode,
        "model": task.model,
        "adapter": task.adapter,
        "prompt": task.prompt,
        "conversation": task.conversation,
        "tools": [t["name"] for t in task.tools],
        "max_tokens": task.max_tokens,
        "temperature": task.temperature,
        "top_p": task.top_p,
        "seed": task.seed,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "output": task.final_text,
        "metrics": task.metrics,
        "compare_group": task.compare_group,
        # A sub-agent's task: the task (and its call) that started it.
        "parent": task.parent_id,
        "parent_call_id": task.parent_call_id,
        "team": task.team,
        "member": task.member,
    }
    if calls:
        doc["calls"] = [{f: getattr(c, f) for f in CALL_FIELDS} for c in task.calls.all()]
        doc["children"] = list(task.children.order_by("pk").values_list("pk", flat=True))
    return doc


def events_after(task: Task, after: int, limit: int) -> list[dict[str, Any]]:
    rows = task.events.filter(seq__gt=after).order_by("seq")[:limit]
    return [{"seq": e.seq, "t_ms": e.t_ms, "kind": e.kind, "payload": e.payload} for e in rows]


def trace_document(task: Task, *, with_config: bool = False, stamp: bool = True) -> dict[str, Any]:
    """Everything about one task: its settings and tool snapshot, calls, every trace event and its
    sub-agents' traces. A tool's `config` (URLs, entry points, instance state) only for staff
    (`with_config`)."""
    doc = task_document(task)
    doc["tool_specs"] = task.tools if with_config else [{k: v for k, v in t.items() if k != "config"}
                                                       for t in task.tools]
    if with_config:
        doc["instances"] = task.instances  # named instances' starting states
    doc["events"] = [{"seq": e.seq, "t_ms": e.t_ms, "kind": e.kind, "payload": e.payload}
                     for e in task.events.order_by("seq").iterator(chunk_size=2000)]
    # The tree: each sub-agent's whole trace, nested (depth and fan-out are capped at submission).
    doc["sub_agents"] = [trace_document(child, with_config=with_config, stamp=False)
                         for child in task.children.order_by("pk")]
    if task.team:
        doc["teammates"] = [{"id": t.pk, "member": t.member, "status": t.status}
                            for t in Task.objects.filter(team=task.team, owner=task.owner).exclude(pk=task.pk)
                            .order_by("pk")]
    if stamp:
        doc["exported_at"] = timezone.now()
    return doc
