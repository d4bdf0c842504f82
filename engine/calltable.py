"""The call table: every call a task's model writes, from its [END] to its result.

`register` checks a completed block (known tool, fresh id, budget, argument names and types;
futures must name earlier calls) and records it; `dispatch_or_wait` sends it to the outbox once
the calls it depends on (its futures' calls, and the previous call on the same stateful
instance) are resolved; `resolve` records a result or error, queues its interrupt and starts
the calls that were waiting for it, with the value substituted (no round trip through the model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.cml import CallComplete, Future
from engine.interrupts import error_payload, queue, result_payload
from engine.messages import CallRequest, TraceEvent
from engine.state import RESOLVED, Call, CallStatus, TaskRun
from engine.tools import ToolSpec

CALL_GRACE_S = 2.0  # beyond a tool's timeout before the engine gives up on its result


class CallTable:
    def __init__(self, engine_id: str, clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self.engine_id = engine_id
        self._clock = clock
        self._wall = wall
        self._outbox: list[CallRequest] = []

    def take_dispatches(self) -> list[CallRequest]:
        out, self._outbox = self._outbox, []
        return out

    def register(self, run: TaskRun, item: CallComplete) -> tuple[Call | None, list[TraceEvent]]:
        """Record a completed block; None (and an error result queued for the model) if it is
        not a valid call. Its id is burnt either way, so results stay unambiguous."""
        position = run.context_len
        problem, args = _check(run, item)
        if problem:
            if item.call_id not in run.calls:
                run.calls[item.call_id] = Call(
                    item.call_id, ToolSpec(item.name, "", {}), {}, set(), position, status=CallStatus.ERROR
                )
            events = [
                run.event(
                    "call_error", {"call_id": item.call_id, "name": item.name, "error": problem, "raw": item.raw[-500:]}
                )
            ]
            return None, events + queue(run, item.call_id, error_payload("invalid_call", problem))
        tool = run.tools[item.name]
        deps = set(item.futures)
        call = Call(item.call_id, tool, args, deps, position, order=len(run.calls))
        if tool.instance:
            # Calls on one stateful instance run one at a time, in the order the model issued them.
            previous = run.last_on_instance.get(tool.instance)
            if previous is not None:
                call.after = {previous}
            run.last_on_instance[tool.instance] = call.call_id
        run.calls[item.call_id] = call
        payload = {"call_id": call.call_id, "name": tool.name, "args": jsonable(args), "position": position,
                   "depends_on": sorted(deps)}
        return call, [run.event("call_decoded", payload)]

    def dispatch_or_wait(self, run: TaskRun, call: Call) -> list[TraceEvent]:
        failed = [d for d in call.deps if run.calls[d].status is CallStatus.ERROR]
        if failed:
            return self.resolve(run, call, False, None, f"depends on failed call {failed[0]}", "dependency_failed")
        unresolved = [d for d in call.deps if run.calls[d].status is not CallStatus.DONE]
        ahead = [d for d in call.after if run.calls[d].status not in RESOLVED]
        if unresolved or ahead:
            call.status = CallStatus.WAITING_DEPS
            return [run.event("call_waiting", {"call_id": call.call_id, "on": sorted(unresolved + ahead)})]
        args = {k: run.calls[v.call_id].value if isinstance(v, Future) else v for k, v in call.args.items()}
        if call.deps:
            try:
                call.tool.validate(args)
            except ValueError as exc:
                return self.resolve(run, call, False, None, str(exc), "invalid_arguments")
        call.args = args
        call.status = CallStatus.DISPATCHED
        call.deadline = self._clock() + call.tool.timeout_s + CALL_GRACE_S
        tool = call.tool.to_dict()
        scenario = run.sub.instances.get(str(call.tool.config.get("instance", "")))
        if scenario is not None:
            tool["config"] = {**tool["config"], "initial_config": scenario}
        request = CallRequest(run.task_id, call.call_id, self.engine_id, tool, args, dispatched_at=self._wall(),
                              order=call.order)
        if run.replay is not None:
            run.replay.held.append(request)  # the dead engine sent it already; decided after the replay
        else:
            self._outbox.append(request)
        return [run.event("call_dispatched", {"call_id": call.call_id, "name": call.tool.name, "args": jsonable(args)})]

    def send(self, request: CallRequest) -> None:
        """Dispatch a request built earlier (a resumed task's call that never got a result)."""
        self._outbox.append(request)

    def resolve(
        self, run: TaskRun, call: Call, ok: bool, value: Any, error: str, error_type: str = "error",
        recorded: str | None = None,
    ) -> list[TraceEvent]:
        call.status = CallStatus.DONE if ok else CallStatus.ERROR
        call.value = value if ok else None
        events = result_payload(run, call, ok, value, error, error_type, recorded)
        for other in run.calls.values():
            if other.status is CallStatus.WAITING_DEPS and call.call_id in other.deps | other.after:
                events += self.dispatch_or_wait(run, other)
        return events

    def expire(self, run: TaskRun, now: float) -> list[TraceEvent]:
        """Time out the task's dispatched calls past their deadline."""
        events: list[TraceEvent] = []
        for call in list(run.calls.values()):
            if call.status is CallStatus.DISPATCHED and call.deadline is not None and now > call.deadline:
                events += self.resolve(
                    run, call, False, None, f"no result within the {call.tool.timeout_s:g} s timeout", "timeout"
                )
        return events


def _check(run: TaskRun, item: CallComplete) -> tuple[str, dict[str, Any]]:
    """(the problem, "" if none; the bound arguments)."""
    if item.call_id in run.calls:
        return f"duplicate call id {item.call_id!r}", {}
    if len(run.calls) >= run.sub.budgets.max_calls:
        return f"call budget exhausted (at most {run.sub.budgets.max_calls} calls)", {}
    tool = run.tools.get(item.name)
    if tool is None:
        return f"unknown function {item.name!r}; available: {', '.join(sorted(run.tools))}", {}
    unknown = [f for f in item.futures if f not in run.calls]
    if unknown:
        return f"{', '.join(unknown)} is not the id of an earlier call", {}
    try:
        args = tool.bind(item.positional, item.keywords)
        # Futures are checked once their values are known; validate the literal part now.
        literal = {k: v for k, v in args.items() if not isinstance(v, Future)}
        tool.validate({**literal, **{k: _placeholder(tool, k) for k in args if k not in literal}})
    except ValueError as exc:
        return str(exc), {}
    return "", args


def _placeholder(tool: ToolSpec, name: str) -> Any:
    """Stand-in for a future's value during the early check: anything its schema allows."""
    schema = tool.parameters.get("properties", {}).get(name, {})
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    return {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}.get(kind, None)


def jsonable(args: dict[str, Any]) -> dict[str, Any]:
    return {k: ({"$future": v.call_id} if isinstance(v, Future) else v) for k, v in args.items()}
