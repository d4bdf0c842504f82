"""OpenTelemetry export through the real processes: an engine with `OTEL_EXPORTER_OTLP_ENDPOINT`
pointing at a local OTLP/HTTP receiver (run by the test) exports a two-call async task's trace
once its end is stored; the same spans are checked with the SDK's in-memory exporter."""

import http.server
import json
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.helpers import wait_for
from webapp.runs import otel
from webapp.runs.models import Task
from webapp.runs.submit import submit_task

pytestmark = pytest.mark.django_db(transaction=True)

PLAN = {"calls": [{"id": "c1", "call": "get_weather(city='Paris')", "e": 300, "after": None},
                  {"id": "c2", "call": "get_stock_price(symbol='AAPL')", "e": 150, "after": None}],
        "final": "Done.", "token_ms": 5, "wait": "trap"}


class Receiver(http.server.BaseHTTPRequestHandler):
    requests: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            Receiver.requests.append(request)
            self.send_response(200)
        else:
            self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def received_spans() -> list:
    return [span for request in Receiver.requests for resource in request.resource_spans
            for scope in resource.scope_spans for span in scope.spans]


def run_task(alice, demo_pack) -> Task:
    tools = [t.spec().to_dict() for t in demo_pack.tools.filter(name__in=["get_weather", "get_stock_price"])]
    task = submit_task(alice, prompt=f"Weather and price?\n[plan] {json.dumps(PLAN)}\n", model="simulated",
                       mode="async", max_tokens=200, tools=tools)
    wait_for(lambda: Task.objects.get(pk=task.pk).is_final, 60, "the task to end")
    task.refresh_from_db()
    assert task.status == "finished", task.status_reason
    return task


def test_a_finished_task_reaches_an_otlp_endpoint_as_one_trace(start_engine, celery_worker_proc, alice, demo_pack,
                                                                 receiver):
    start_engine("engine-otel", preload="simulated", OTEL_EXPORTER_OTLP_ENDPOINT=receiver,
                 OTEL_BSP_SCHEDULE_DELAY="100", OTEL_SERVICE_NAME="asynclm-test")
    task = run_task(alice, demo_pack)
    spans = wait_for(lambda: received_spans() if any(s.name == "task" for s in received_spans()) else None,
                     30, "the spans to arrive")
    (root,) = [s for s in spans if s.name == "task"]
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["asynclm.task.id"].int_value == task.pk
    assert attributes["gen_ai.request.model"].string_value == "simulated"
    assert attributes["asynclm.metrics.injected_tokens"].int_value > 0
    resource = {a.key: a.value.string_value for a in Receiver.requests[0].resource_spans[0].resource.attributes}
    assert resource["service.name"] == "asynclm-test"
    children = [s for s in spans if s.parent_span_id == root.span_id]
    assert all(s.trace_id == root.trace_id for s in spans) and len(children) == len(spans) - 1
    names = sorted(s.name for s in children)
    assert {"queued", "prefill", "call get_weather", "call get_stock_price", "injection"} <= set(names)
    for span in children:
        assert root.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        assert span.end_time_unix_nano <= root.end_time_unix_nano


def test_the_span_tree_follows_the_trace(start_engine, celery_worker_proc, alice, demo_pack):
    start_engine("engine-otel-tree", preload="simulated")
    task = run_task(alice, demo_pack)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.record(task, provider.get_tracer("test"))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["task"]
    weather, stock = spans["call get_weather"], spans["call get_stock_price"]
    for call in (weather, stock):
        assert call.parent.span_id == root.context.span_id
        assert [e.name for e in call.events] == ["dispatched", "started", "finished", "injected"]
        assert call.attributes["asynclm.call.status"] == "done"
    assert json.loads(weather.attributes["asynclm.call.arguments"]) == {"city": "Paris"}
    # the model decoded while the calls ran: the second call was decoded after the first was sent
    assert stock.start_time > weather.events[0].timestamp
    parked = [s for s in exporter.get_finished_spans() if s.name == "parked"]
    assert parked and all(s.parent.span_id == root.context.span_id for s in parked)
