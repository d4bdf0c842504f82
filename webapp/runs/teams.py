"""Teams: agents started together that talk to each other while they work.

Each member is a task of its own (same owner, one team id, a member name), with the tools it was
given plus a built-in `send_message(to, text)`. A call of it is dispatched like any call; a worker
(`workers.tasks.team_message`) hands the text to the teammate's engine as a message, which that
engine injects at the teammate's next token boundary outside a call block, framed as a chat turn
("Message from NAME: ..."), like a person's message, and with the same neutralising of CML
markers, so a member cannot forge another's frames. The sender gets "delivered" or an error
result (unknown teammate, one that has not started or has ended). A member's part ends when its
task ends; cancelling one member cancels the team.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from django.conf import settings

from engine.messages import CallReport, CallRequest
from engine.tools import ToolSpec
from webapp.core.validators import unstorable
from webapp.runs.agents import report_to_engine_of
from webapp.runs.models import Task

SEND_MESSAGE = "send_message"
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
MIN_MEMBERS, MAX_MEMBERS = 2, 8


class TeamError(ValueError):
    pass


def send_message_tool(others: list[str]) -> dict[str, Any]:
    return ToolSpec(
        name=SEND_MESSAGE,
        description=f"Send a message to a teammate ({', '.join(others)}); it reaches them while they work.",
        parameters={"type": "object", "properties": {
            "to": {"type": "string", "enum": others},
            "text": {"type": "string", "maxLength": settings.ASYNCLM_MAX_MESSAGE_CHARS}}, "required": ["to", "text"]},
        est_latency_ms=20, timeout_s=10.0, kind="team",
    ).to_dict()


def member_prompt(goal: str, name: str, role: str, others: list[str]) -> str:
    return (f"{role.strip()}\nYou are {name}, working in a team with {', '.join(others)}. Call "
            f"{SEND_MESSAGE}(to, text) to tell a teammate something; their messages reach you while you "
            f"work.\n\n{goal}")


def check_members(members: list[dict[str, Any]]) -> None:
    if not MIN_MEMBERS <= len(members) <= MAX_MEMBERS:
        raise TeamError(f"a team has {MIN_MEMBERS} to {MAX_MEMBERS} members")
    names = [m.get("name", "") for m in members]
    for name in names:
        if not isinstance(name, str) or not NAME.match(name):
            raise TeamError(f"member name {name!r}: a letter, then up to 31 letters, digits, _ or -")
    if len(set(names)) != len(names):
        raise TeamError("member names must differ")


def submit_team(owner, goal: str, members: list[dict[str, Any]], **common: Any) -> list[Task]:
    """Store one task per member (`members`: name, role, model, mode, tools as snapshots) and queue
    them all. TooManyTasks: nothing was stored."""
    from webapp.runs.submit import ServiceUnavailable, _queue, check_quota

    check_members(members)
    check_quota(owner, adding=len(members))
    team = uuid.uuid4()
    tasks = []
    for m in members:
        others = [o["name"] for o in members if o is not m]
        tasks.append(Task.objects.create(
            owner=owner, team=team, member=m["name"], prompt=member_prompt(goal, m["name"], m.get("role", ""), others),
            model=m["model"], mode=m.get("mode", "async"), tools=[*m.get("tools", []), send_message_tool(others)],
            **common))
    try:
        for task in tasks:
            _queue(task)
    except ServiceUnavailable:
        Task.objects.filter(team=team, status=Task.Status.QUEUED).update(
            status=Task.Status.FAILED, status_reason="the team could not be queued")
        raise
    return tasks


def deliver_message(request: CallRequest) -> None:
    """A member's send_message call: hand the text to the teammate's engine, then report to the sender."""
    from webapp.runs.submit import ServiceUnavailable, TaskNotRunning, send_message

    sender = Task.objects.filter(pk=request.task_id).first()
    if sender is None or sender.is_final:
        return
    to, text = request.args.get("to"), request.args.get("text")
    mate = Task.objects.filter(team=sender.team, member=to).first() if sender.team and isinstance(to, str) else None
    problem = ""
    if not isinstance(text, str) or not text.strip():
        problem = "send_message needs a non-empty `text`"
    elif len(text) > settings.ASYNCLM_MAX_MESSAGE_CHARS:
        problem = f"a message holds at most {settings.ASYNCLM_MAX_MESSAGE_CHARS} characters"
    elif unstorable(text):
        problem = f"the message cannot be sent: {unstorable(text)}"
    elif mate is None or mate.pk == sender.pk:
        problem = f"no teammate named {to!r}"
    elif mate.status == Task.Status.QUEUED:
        problem = f"{to} has not started yet: try again shortly"
    elif mate.is_final:
        problem = f"{to} has ended its part ({mate.status}): it reads no more messages"
    if not problem:
        try:
            send_message(mate, f"Message from {sender.member}: {text}")
        except (TaskNotRunning, ServiceUnavailable) as exc:
            problem = f"the message did not reach {to}: {exc}"
    report_to_engine_of(sender, CallReport(sender.pk, request.call_id, "finished", "team", time.time(), ok=not problem,
                               result=f"delivered to {to}" if not problem else None, error=problem,
                               error_type="invalid_arguments" if problem else ""))


def teammates(task: Task) -> list[Task]:
    return list(Task.objects.filter(team=task.team).exclude(pk=task.pk).order_by("pk")) if task.team else []
