"""Sub-agents: a call of an `agent` tool runs as a task of its own (a child), and the child's
final answer comes back to the parent as the call's result, injected like any result.

The path: the parent's engine dispatches the call like any other; a Celery worker
(`workers.tasks.start_agent`) creates the child task and queues it through the normal intake, so
any engine can run it and no worker waits for it. When the child ends, its engine stores the
end and calls `on_task_final`, which hands the outcome to the engine now holding the parent, as
a worker reports a result. The child is a durable task: if an engine dies, the child is resumed
or failed like any task, and exactly one outcome reaches the parent (one child per (parent,
call id), and the engine resolves a call once). The parent gets the child's answer: what it wrote
outside its own calls and the results injected into it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from engine.catalog import UnknownModel, get_model
from engine.cml import prose
from engine.messages import CallReport, CallRequest
from webapp.runs.models import Task

log = logging.getLogger(__name__)

AGENT_GRACE_S = 10.0  # the parent's call outlives the child's own wall budget by this much
DEFAULT_WALL_S = 120.0
MAX_INSTRUCTION_CHARS = 4000
MODES = {m.value for m in Task.Mode}


class AgentConfigError(ValueError):
    pass


def agent_wall_s(config: dict[str, Any]) -> float:
    try:
        return max(1.0, min(float(config.get("max_wall_s", DEFAULT_WALL_S)), 3600.0))
    except (TypeError, ValueError):
        return DEFAULT_WALL_S


def check_agent_config(config: dict[str, Any]) -> None:
    """What an `agent` tool's config must hold: `model` (a catalog model), `mode`, `pack` (the
    name of the tool pack the sub-agent may call, or empty for none), `instruction` (its system
    instruction), and optionally `max_wall_s` and `max_tokens`."""
    from webapp.tools.models import ToolPack

    unknown = set(config) - {"model", "mode", "pack", "instruction", "max_wall_s", "max_tokens"}
    if unknown:
        raise AgentConfigError(f"unknown agent settings: {', '.join(sorted(unknown))}")
    try:
        get_model(str(config.get("model", "")))
    except UnknownModel as exc:
        raise AgentConfigError(str(exc)) from None
    if config.get("mode", "async") not in MODES:
        raise AgentConfigError(f"mode must be one of {', '.join(sorted(MODES))}")
    instruction = config.get("instruction", "")
    if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION_CHARS:
        raise AgentConfigError(f"instruction must be text of at most {MAX_INSTRUCTION_CHARS} characters")
    pack = config.get("pack", "")
    if pack and not ToolPack.objects.filter(name=pack).exists():
        raise AgentConfigError(f"no tool pack named {pack!r}")
    tokens = config.get("max_tokens", 256)
    if not isinstance(tokens, int) or not 1 <= tokens <= settings.ASYNCLM_MAX_TOKENS_LIMIT:
        raise AgentConfigError(f"max_tokens must be an integer from 1 to {settings.ASYNCLM_MAX_TOKENS_LIMIT}")


def _child_tools(pack: str) -> list[dict[str, Any]]:
    from webapp.tools.models import ToolPack

    found = ToolPack.objects.filter(name=pack).first() if pack else None
    return found.tool_specs() if found else []


def start_child(request: CallRequest) -> None:
    """Create and queue the child task of an agent call, or report why not to the parent."""
    from webapp.runs.submit import ServiceUnavailable, TooManyTasks, _queue, check_quota

    parent = Task.objects.filter(pk=request.task_id).first()
    if parent is None or parent.is_final:
        return  # the parent is gone or over: nobody waits for this call
    existing = Task.objects.filter(parent=parent, parent_call_id=request.call_id).first()
    if existing is not None:  # a redelivered call: the child exists (and reports when it ends)
        if existing.is_final:
            report_outcome(existing)
        return
    config = request.tool.get("config") or {}
    task_text = request.args.get("task")
    if not isinstance(task_text, str) or not task_text.strip():
        return _refuse(parent, request, "invalid_arguments", "an agent call needs a non-empty `task` string")
    if parent.depth + 1 > settings.ASYNCLM_AGENT_MAX_DEPTH:
        return _refuse(parent, request, "agent_limit",
                       f"sub-agents may nest {settings.ASYNCLM_AGENT_MAX_DEPTH} deep: this task cannot start another")
    if parent.children.count() >= settings.ASYNCLM_AGENT_MAX_FANOUT:
        return _refuse(parent, request, "agent_limit",
                       f"a task may start at most {settings.ASYNCLM_AGENT_MAX_FANOUT} sub-agents")
    try:
        check_agent_config(config)
        check_quota(parent.owner)
    except (AgentConfigError, TooManyTasks) as exc:
        return _refuse(parent, request, "agent_limit" if isinstance(exc, TooManyTasks) else "tool_error", str(exc))
    instruction = str(config.get("instruction", "")).strip()
    try:
        with transaction.atomic():
            child = Task.objects.create(
                owner=parent.owner, parent=parent, parent_call_id=request.call_id, depth=parent.depth + 1,
                prompt=f"{instruction}\n\n{task_text}" if instruction else task_text,
                model=config["model"], mode=config.get("mode", "async"), tools=_child_tools(config.get("pack", "")),
                max_tokens=config.get("max_tokens", 256), max_wall_s=agent_wall_s(config),
                temperature=parent.temperature, top_p=parent.top_p, seed=parent.seed,
            )
    except IntegrityError:
        return  # another worker created it just now
    try:
        _queue(child)
    except ServiceUnavailable as exc:
        report_outcome(child, error=str(exc))


def _refuse(parent: Task, request: CallRequest, error_type: str, message: str) -> None:
    _report(parent, CallReport(parent.pk, request.call_id, "finished", "agents", time.time(), ok=False,
                               error=message, error_type=error_type))


def report_outcome(child: Task, error: str = "") -> None:
    """Hand a child's end to the engine holding its parent: its answer, or why it has none."""
    parent = child.parent
    if parent is None or parent.is_final:
        return
    ok = child.status == Task.Status.FINISHED and not error
    reason = error or child.status_reason or f"the sub-agent's task {child.status}"
    _report(parent, CallReport(parent.pk, child.parent_call_id, "finished", f"agent-task-{child.pk}", time.time(),
                               ok=ok, result=(prose(child.final_text) or child.final_text) if ok else None,
                               error="" if ok else f"sub-agent task {child.pk} {child.status}: {reason}",
                               error_type="" if ok else "agent_failed"))


def _report(parent: Task, rep: CallReport) -> None:
    # Short patience: this may run in an engine's loop (a child's end); if Redis stays away the
    # parent's call ends by its timeout (the child's budget plus a grace) with an error result.
    report_to_engine_of(parent, rep, patience_s=1.0)


def report_to_engine_of(task: Task, rep: CallReport, patience_s: float = 5.0) -> None:
    """Hand a call's outcome to the engine holding `task` now (it may have moved since the call)."""
    from workers.reporting import report

    engine_id = Task.objects.filter(pk=task.pk).values_list("engine_id", flat=True).first()
    if not engine_id:
        log.warning("call %s of task %s: the task has no engine to report to", rep.call_id, task.pk)
        return
    report(engine_id, rep, patience_s=patience_s)


def end_children(task: Task, reason: str) -> None:
    """A task that ended takes its unfinished sub-agents with it."""
    from webapp.runs.submit import cancel_task

    for child in task.children.exclude(status__in=Task.FINAL):
        cancel_task(child, reason)
