"""OpenTelemetry export: each finished task becomes one trace in the operator's backend (Jaeger,
Tempo, Honeycomb, ...), built from its stored trace once its end is stored.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the
exporter is OTLP over HTTP and reads the SDK's usual variables (`OTEL_SERVICE_NAME`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ...). Spans are made after the fact with
the times the trace recorded, so the decode loop does no tracing work; a batch processor sends
them from a thread of its own.

The tree: `task` (submission to end; the paper's metrics as attributes) with children `queued`,
`prefill`, one `call <tool>` per call (decoded to injected, with dispatched/started/finished/
result as span events), one `injection` per interrupt frame, and `parked` / `blocked` for the
intervals the model waited.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode, Tracer

from engine.timeline import Timeline
from webapp.runs.models import Task

log = logging.getLogger(__name__)

SCOPE = "asynclm"
MAX_ATTRIBUTE_CHARS = 1000  # arguments and errors as attributes: enough to read, not a payload


def enabled() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


@functools.cache
def _tracer() -> Tracer:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    service = os.environ.get("OTEL_SERVICE_NAME", "asynclm")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider.get_tracer(SCOPE)


def export(task_id: int) -> None:
    """The task's trace to the OTLP endpoint, when one is configured. Never raises: telemetry
    must not stop the engine that calls this."""
    if not enabled():
        return
    try:
        task = Task.objects.filter(pk=task_id).first()
        if task is not None and task.started_at is not None:
            record(task, _tracer())
    except Exception:
        log.exception("could not export task %s to OpenTelemetry", task_id)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS] + "…"


def _metric_attributes(metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"asynclm.metrics.{k}": v for k, v in metrics.items() if isinstance(v, bool | int | float | str)}


def record(task: Task, tracer: Tracer) -> None:
    """Spans for one task (with the end recorded) on `tracer`."""
    events = list(task.events.order_by("seq"))
    status = next((e for e in events if e.kind == "status"), None)
    assert task.started_at is not None
    zero = float((status.payload if status else {}).get("started_at") or task.started_at.timestamp())
    timeline = Timeline.of(events)
    end_ms = timeline.finished_at if timeline.finished_at is not None else timeline.last_t

    def at(t_ms: float) -> int:
        return _ns(zero + t_ms / 1000)

    metrics = task.metrics or {}
    root = tracer.start_span("task", start_time=_ns(task.created_at.timestamp()), attributes={
        "asynclm.task.id": task.pk, "asynclm.task.status": task.status, "asynclm.task.mode": task.mode,
        "asynclm.task.engine": task.engine_id, "gen_ai.operation.name": "chat", "gen_ai.request.model": task.model,
        "gen_ai.usage.input_tokens": int(metrics.get("prompt_tokens") or 0),
        "gen_ai.usage.output_tokens": int(metrics.get("tokens") or 0),
        **({"asynclm.adapter.name": task.adapter.get("name", ""),
            "asynclm.adapter.sha256": task.adapter.get("sha256", "")} if task.adapter else {}),
        **_metric_attributes(metrics),
    })
    if task.status == Task.Status.FAILED:
        root.set_status(Status(StatusCode.ERROR, task.status_reason[:MAX_ATTRIBUTE_CHARS]))
    inside = trace.set_span_in_context(root)

    def child(name: str, start_ns: int, end_ns: int) -> None:
        tracer.start_span(name, context=inside, start_time=start_ns).end(end_time=max(start_ns, end_ns))

    child("queued", _ns(task.created_at.timestamp()), at(0))
    names = {"prefill": "prefill", "injecting": "injection", "parked": "parked", "blocked": "blocked"}
    for lane in timeline.lanes:
        if lane.state in names:
            child(names[lane.state], at(lane.start), at(end_ms if lane.end is None else lane.end))
    for call in timeline.calls.values():
        _call_span(tracer, inside, call, at, end_ms)
    root.end(end_time=max(at(end_ms), _ns(task.created_at.timestamp())))


def _call_span(tracer: Tracer, inside: Any, call: Any, at: Any, end_ms: float) -> None:
    start = call.decoded_ms if call.decoded_ms is not None else call.dispatched_ms
    if start is None:
        return
    stop = next((t for t in (call.injected_ms, call.finished_ms) if t is not None), end_ms)
    span = tracer.start_span(f"call {call.tool or call.call_id}", context=inside, start_time=at(start), attributes={
        "asynclm.call.id": call.call_id, "asynclm.call.tool": call.tool, "asynclm.call.status": call.status,
        "asynclm.call.arguments": _short(call.arguments), "asynclm.call.worker": call.worker,
        "gen_ai.tool.name": call.tool,
    })
    for name, t in (("dispatched", call.dispatched_ms), ("started", call.started_ms),
                    ("finished", call.finished_ms), ("injected", call.injected_ms)):
        if t is not None:
            span.add_event(name, timestamp=at(t))
    if call.status == "error":
        span.set_status(Status(StatusCode.ERROR, _short(call.error)))
    span.end(end_time=max(at(stop), at(start)))
