"""Run one call of a registry tool through the real execution path (Celery, a worker, the
result stream) and wait for its report: the admin's test-call page uses it."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from engine.keys import inbox_stream
from engine.messages import CallReport, CallRequest
from engine.tools import ToolSpec
from webapp.core.redis import client
from webapp.runs.dispatch import CeleryDispatcher
from workers.instances import instance_key


@dataclass
class TrialResult:
    ok: bool
    result: Any = None
    error: str = ""
    worker: str = ""
    latency_ms: float | None = None  # enqueue -> result reported


def run_test_call(tool: ToolSpec, args: dict[str, Any], wait_s: float | None = None) -> TrialResult:
    try:
        tool.validate(args)
    except ValueError as exc:
        return TrialResult(False, error=str(exc))
    trial = uuid.uuid4().hex[:12]
    engine_id = f"admin-test-{trial}"
    if tool.instance:
        # A stateful tool's test call starts from a fresh instance of its own.
        tool = replace(tool, config={**tool.config, "instance": f"test_{trial}"})
    key = inbox_stream(engine_id)
    r = client()
    sent = time.time()
    CeleryDispatcher().dispatch(CallRequest(0, f"test-{trial}", engine_id, tool.to_dict(), args, sent))
    deadline = time.monotonic() + (wait_s if wait_s is not None else tool.timeout_s + 5)
    last = "0"
    try:
        while time.monotonic() < deadline:
            for _, entries in r.xread({key: last}, block=250) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    rep = CallReport.from_json(fields[b"r"])
                    if rep.phase == "finished":
                        return TrialResult(rep.ok, rep.result, rep.error, rep.worker,
                                              round((rep.at - sent) * 1000, 1))
    finally:
        r.delete(key)
        if tool.instance:
            r.delete(instance_key(0, tool.instance))
    return TrialResult(False, error="no worker answered in time: is a Celery worker running (make run)?")
