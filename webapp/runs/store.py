"""The engine's TaskStore over the Django models: status transitions and batched trace events."""

from __future__ import annotations

import logging

from django.db import DatabaseError, transaction
from django.db.models import Max
from django.utils import timezone

from engine.messages import TraceEvent
from engine.timeline import EventKind, apply_call_event, call_ids
from webapp.runs.models import Task, ToolCall
from webapp.runs.models import TraceEvent as TraceEventRow

log = logging.getLogger(__name__)


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

    def events_of(self, task_id: int) -> list[dict]:
        rows = TraceEventRow.objects.filter(task_id=task_id).order_by("seq")
        return list(rows.values("seq", "t_ms", "kind", "payload"))

    def take_over(self, task_id: int, engine_id: str) -> bool:
        """A running task now runs on this engine (its messages and cancellations come here)."""
        return bool(Task.objects.filter(pk=task_id, status=Task.Status.RUNNING).update(engine_id=engine_id))

    def save_events(self, events: list[TraceEvent]) -> None:
        """Store a batch, task by task: a value one task's events carry that the database refuses
        costs that event (logged), never another task's events or the rest of the batch."""
        by_task: dict[int, list[TraceEvent]] = {}
        for e in events:
            by_task.setdefault(e.task_id, []).append(e)
        # A task deleted mid-run loses its events, not the engine.
        existing = set(Task.objects.filter(pk__in=by_task).values_list("pk", flat=True))
        for task_id, task_events in by_task.items():
            if task_id in existing:
                self._save_task_events(task_events)

    def _save_task_events(self, events: list[TraceEvent]) -> None:
        rows = [TraceEventRow(task_id=e.task_id, seq=e.seq, t_ms=e.t_ms, kind=e.kind, payload=e.payload)
                for e in events]
        # The writer thread runs in autocommit: a statement that fails leaves nothing behind.
        try:
            TraceEventRow.objects.bulk_create(rows, ignore_conflicts=True)
        except (DatabaseError, TypeError, ValueError):
            for row in rows:  # one by one: keep every row the database takes
                try:
                    TraceEventRow.objects.bulk_create([row], ignore_conflicts=True)
                except (DatabaseError, TypeError, ValueError) as exc:
                    log.error("task %s: could not store its %s event %s: %s", row.task_id, row.kind, row.seq, exc)
        try:
            self._record_calls([e for e in events if call_ids(e.kind, e.payload)])
        except (DatabaseError, TypeError, ValueError) as exc:
            log.error("task %s: could not update its calls: %s", events[0].task_id, exc)
        for e in events:  # the engine's first event says which LoRA adapter (if any) the model runs with
            if e.kind == EventKind.STATUS and e.payload.get("status") == "running" and "adapter" in e.payload:
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
            for call_id in call_ids(e.kind, p):
                row = rows.get((e.task_id, call_id))
                if row is None:
                    if e.kind == EventKind.INTERRUPT_INJECTED:
                        continue  # a frame of a call this store never saw decoded
                    row = rows[(e.task_id, call_id)] = ToolCall(task_id=e.task_id, call_id=call_id,
                                                                tool=p.get("name", ""), decoded_ms=e.t_ms)
                apply_call_event(row, e.kind, e.t_ms, p)
        for row in rows.values():
            row.save()

    def finish(self, task_id: int, status: str, reason: str, text: str, metrics: dict) -> bool:
        return bool(Task.objects.filter(pk=task_id).exclude(status__in=Task.FINAL).update(
            status=status, status_reason=reason, final_text=text, metrics=metrics,
            finished_at=timezone.now(),
        ))

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
        return event
