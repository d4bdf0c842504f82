"""The engine's TaskStore over the Django models: status transitions and batched trace events."""

from __future__ import annotations

import json

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from engine.messages import TraceEvent
from webapp.runs.models import Task, ToolCall
from webapp.runs.models import TraceEvent as TraceEventRow
from webapp.runs.submit import queue_next_of_group

CALL_EVENTS = {"call_decoded", "call_error", "call_waiting", "call_dispatched", "call_started", "call_finished",
               "call_result", "interrupt_injected"}


class DjangoTaskStore:
    def start(self, task_id: int, engine_id: str) -> str | None:
        with transaction.atomic():
            task = Task.objects.select_for_update().filter(pk=task_id).first()
            if task is None:
                return None
            before = task.status
            if before == Task.Status.QUEUED:
                task.status = Task.Status.RUNNING
                task.engine_id = engine_id
                task.started_at = timezone.now()
                task.save(update_fields=["status", "engine_id", "started_at"])
            return before

    def status_of(self, task_id: int) -> str | None:
        return Task.objects.filter(pk=task_id).values_list("status", flat=True).first()

    def save_events(self, events: list[TraceEvent]) -> None:
        rows = [TraceEventRow(task_id=e.task_id, seq=e.seq, t_ms=e.t_ms, kind=e.kind, payload=e.payload)
                for e in events]
        # A task deleted mid-run loses its events, not the engine.
        existing = set(Task.objects.filter(pk__in={e.task_id for e in events}).values_list("pk", flat=True))
        TraceEventRow.objects.bulk_create([r for r in rows if r.task_id in existing], ignore_conflicts=True)
        self._record_calls([e for e in events if e.kind in CALL_EVENTS and e.task_id in existing])
        for e in events:  # the engine's first event says which LoRA adapter (if any) the model runs with
            if e.kind == "status" and e.payload.get("status") == "running" and "adapter" in e.payload:
                Task.objects.filter(pk=e.task_id).update(adapter=e.payload["adapter"])

    def _record_calls(self, events: list[TraceEvent]) -> None:
        """Keep the ToolCall rows in step with the call events of the trace."""
        if not events:
            return
        rows: dict[tuple[int, str], ToolCall] = {}
        for call in ToolCall.objects.filter(task_id__in={e.task_id for e in events}):
            rows[(call.task_id, call.call_id)] = call
        for e in events:
            p = e.payload
            ids = p["calls"] if e.kind == "interrupt_injected" else [p["call_id"]]
            for call_id in ids:
                row = rows.get((e.task_id, call_id))
                if row is None:
                    if e.kind == "interrupt_injected":
                        continue  # a protocol error frame (id "error"), not a call
                    row = rows[(e.task_id, call_id)] = ToolCall(task_id=e.task_id, call_id=call_id,
                                                                tool=p.get("name", ""), decoded_ms=e.t_ms)
                apply_call_event(row, e)
        for row in rows.values():
            row.save()

    def finish(self, task_id: int, status: str, reason: str, text: str, metrics: dict) -> None:
        if Task.objects.filter(pk=task_id).exclude(status__in=Task.FINAL).update(
            status=status, status_reason=reason, final_text=text, metrics=metrics,
            finished_at=timezone.now(),
        ):
            queue_next_of_group(task_id)

    def fail_abandoned(self, task_id: int, reason: str) -> TraceEvent | None:
        with transaction.atomic():
            task = Task.objects.select_for_update().filter(pk=task_id).first()
            if task is None or task.is_final:
                return None
            stored = TraceEventRow.objects.filter(task_id=task_id)
            last = stored.aggregate(m=Max("seq"))["m"] or 0
            # Keep what the dead engine had already streamed and stored.
            text = "".join(e.payload.get("text", "") for e in stored.filter(kind="token"))
            t_ms = (timezone.now() - task.started_at).total_seconds() * 1000 if task.started_at else 0.0
            event = TraceEvent(task_id=task_id, seq=last + 1, t_ms=round(t_ms, 3), kind="finish", payload={
                "status": "failed", "reason": reason, "finish_reason": "failed", "text": text,
                "metrics": task.metrics,
            })
            TraceEventRow.objects.create(task=task, seq=event.seq, t_ms=event.t_ms, kind=event.kind,
                                         payload=event.payload)
            task.status = Task.Status.FAILED
            task.status_reason = reason
            task.final_text = text
            task.finished_at = timezone.now()
            task.save(update_fields=["status", "status_reason", "final_text", "finished_at"])
        queue_next_of_group(task_id)
        return event


def apply_call_event(row: ToolCall, e: TraceEvent) -> None:
    p = e.payload
    if e.kind == "call_decoded":
        row.tool, row.arguments, row.decoded_ms = p["name"], p["args"], e.t_ms
        row.status = ToolCall.Status.DECODED
    elif e.kind == "call_error":
        row.status, row.error = ToolCall.Status.ERROR, p["error"]
    elif e.kind == "call_waiting":
        row.status = ToolCall.Status.WAITING
    elif e.kind == "call_dispatched":
        row.status, row.arguments, row.dispatched_ms = ToolCall.Status.DISPATCHED, p["args"], e.t_ms
    elif e.kind == "call_started":
        row.worker, row.started_ms = p["worker"], p["at_ms"]
        if row.status == ToolCall.Status.DISPATCHED:
            row.status = ToolCall.Status.RUNNING
    elif e.kind == "call_finished":
        row.worker, row.finished_ms = p["worker"], p["at_ms"]
    elif e.kind == "call_result":
        row.status = ToolCall.Status.DONE if p["ok"] else ToolCall.Status.ERROR
        row.error = p.get("error", "")
        row.result = _json_or_text(p.get("injected", ""))
    elif e.kind == "interrupt_injected":
        row.injected_ms = e.t_ms


def _json_or_text(text: str):  # noqa: ANN202
    try:
        return json.loads(text)
    except ValueError:
        return text  # truncated results are no longer valid JSON
