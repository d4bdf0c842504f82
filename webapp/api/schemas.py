"""The API's request and response shapes (they make the OpenAPI document)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.conf import settings
from ninja import Field, Schema
from pydantic import field_validator

from webapp.core.validators import unstorable
from webapp.tools.models import Tool, ToolPack

Mode = Literal["async", "sync", "sync_parallel"]


class TaskIn(Schema):
    prompt: str
    model: str | None = Field(None, description="a model name from the catalog; the default model when left out")
    mode: Mode = "async"
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    pack: str | None = Field(None, description="give the model every enabled tool of this pack")
    tools: list[str] = Field(default_factory=list, description='tools as "pack/name", e.g. "demo/get_weather"')
    instances: dict[str, Any] | None = Field(
        None, description='named BFCL instances: {"e1": {"class": "GorillaFileSystem", "initial_config": {}}}')
    max_calls: int = 16
    max_wall_s: float = 300.0
    compare: bool = Field(False, description="run under sync, sync_parallel and async, one after the other")

    def form_data(self) -> dict[str, Any]:
        """The submit form's input: the API validates exactly like the dashboard."""
        data = self.model_dump(exclude={"tools", "instances", "model", "pack", "compare"})
        data["model"] = self.model or settings.ASYNCLM_DEFAULT_MODEL
        data["pack"] = self.pack or ""
        data["tools"] = [str(pk) for pk in _tool_ids(self.tools)]
        if self.instances:
            data["instances"] = json.dumps(self.instances)
        if self.compare:
            data["compare"] = "on"
        return data


def _tool_ids(names: list[str]) -> list[int | str]:
    ids: list[int | str] = []
    for name in names:
        pack, _, tool = name.rpartition("/")
        found = Tool.objects.filter(pack__name=pack, name=tool, enabled=True).values_list("pk", flat=True).first()
        ids.append(found if found is not None else f"unknown tool {name!r}")  # the form reports it
    return ids


class MessageIn(Schema):
    text: str = Field(min_length=1, max_length=settings.ASYNCLM_MAX_MESSAGE_CHARS)

    @field_validator("text")
    @classmethod
    def _storable(cls, value: str) -> str:
        problem = unstorable(value)
        if problem:
            raise ValueError(problem)
        return value


class CallOut(Schema):
    call_id: str
    tool: str
    arguments: Any
    status: str
    worker: str
    decoded_ms: float | None
    dispatched_ms: float | None
    started_ms: float | None
    finished_ms: float | None
    injected_ms: float | None
    result: Any
    error: str


class AdapterOut(Schema):
    name: str
    sha256: str


class TaskSummary(Schema):
    id: int
    url: str
    status: str
    status_reason: str
    mode: Mode
    model: str
    adapter: AdapterOut | None = Field(
        None, description="the LoRA adapter the engine ran the model with; null for a plain model or before it started")
    prompt: str
    conversation: list[dict[str, str]] = Field(
        default_factory=list, description="the turns before the prompt (a task from the OpenAI-compatible endpoint)")
    tools: list[str]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    output: str
    metrics: dict[str, Any]
    compare_group: UUID | None
    parent: int | None = Field(None, description="a sub-agent's task: the task whose agent call started it")
    parent_call_id: str = ""
    team: UUID | None = Field(None, description="a team member's task: the team's id")
    member: str = ""


class TaskOut(TaskSummary):
    calls: list[CallOut]
    children: list[int] = Field(default_factory=list, description="the sub-agent tasks this task started")


class MemberIn(Schema):
    name: str = Field(description="how teammates address it (a letter, then letters, digits, _ or -)")
    role: str = Field(description="its instruction")
    model: str | None = Field(None, description="a catalog model; the default model when left out")
    mode: Mode = "async"
    pack: str | None = Field(None, description="the tool pack it may use (besides send_message)")


class TeamIn(Schema):
    goal: str
    members: list[MemberIn]
    max_tokens: int = 256
    max_wall_s: float = 300.0

    def form_data(self) -> dict[str, Any]:
        """The team page's input: the API validates exactly like the page."""
        data: dict[str, Any] = {"team-goal": self.goal, "team-max_tokens": self.max_tokens,
                                "team-max_wall_s": self.max_wall_s, "member-TOTAL_FORMS": len(self.members),
                                "member-INITIAL_FORMS": 0}
        for i, m in enumerate(self.members):
            pack = ToolPack.objects.filter(name=m.pack).values_list("pk", flat=True).first() if m.pack else ""
            data |= {f"member-{i}-name": m.name, f"member-{i}-role": m.role,
                     f"member-{i}-model": m.model or settings.ASYNCLM_DEFAULT_MODEL, f"member-{i}-mode": m.mode,
                     f"member-{i}-pack": pack if pack is not None else f"unknown pack {m.pack!r}"}
        return data


class TeamOut(Schema):
    team: UUID
    tasks: list[TaskOut]


class ComparisonOut(Schema):
    compare_group: UUID
    tasks: list[TaskOut]


class TaskFilters(Schema):
    status: Literal["queued", "running", "finished", "failed", "cancelled"] | None = None
    mode: Mode | None = None
    compare_group: UUID | None = None


class EventOut(Schema):
    seq: int
    t_ms: float
    kind: str
    payload: dict[str, Any]


class EventsOut(Schema):
    task_id: int
    status: str
    events: list[EventOut]
    last_seq: int


class ActionOut(Schema):
    detail: str


class ErrorOut(Schema):
    detail: str


class ValidationErrorOut(Schema):
    detail: str
    errors: dict[str, list[str]]
