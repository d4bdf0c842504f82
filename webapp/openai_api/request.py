"""A `POST /v1/chat/completions` body, checked at the boundary, and the task it becomes.

OpenAI's fields that mean something here are read (model, messages, stream, stream_options,
max_tokens / max_completion_tokens, temperature, top_p, seed); fields a client library sends
that change nothing here (user, metadata, ...) are ignored; fields that would change the answer
and that we cannot honour (client-side `tools`, n > 1, stop sequences, images) are refused with a
400 rather than silently dropped. Our extensions: `tool_packs` (registry packs whose enabled
tools the model may call; the service runs them itself, asynchronously) and `asynclm_mode`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from webapp.core.validators import unstorable
from webapp.openai_api.errors import ApiError

MAX_MESSAGES = 100


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ApiError(400, f"message content of type {part.get('type')!r} is not supported: "
                                    "only text parts are", param="messages")
            parts.append(TextPart.model_validate(part).text)
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=100)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n: int | None = None
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    tool_packs: list[str] = Field(default_factory=list, max_length=20)
    asynclm_mode: Literal["async", "sync", "sync_parallel"] = "async"

    @field_validator("tool_packs")
    @classmethod
    def _pack_names(cls, names: list[str]) -> list[str]:
        if any(not isinstance(n, str) or not n or len(n) > 100 for n in names):
            raise ValueError("tool pack names are strings of 1 to 100 characters")
        return names

    # -- what we cannot honour ------------------------------------------------------------
    def refuse_unsupported(self) -> None:
        if self.tools:
            raise ApiError(400, "client-side tools are not supported: the service runs tools itself. Name registry "
                                'tool packs in the extension field "tool_packs" (e.g. "tool_packs": ["demo"]).',
                           param="tools", code="unsupported_parameter")
        if self.tool_choice not in (None, "auto", "none"):
            raise ApiError(400, 'tool_choice may only be "auto" or "none" here', param="tool_choice",
                           code="unsupported_parameter")
        if self.n not in (None, 1):
            raise ApiError(400, "n must be 1: one task answers one request", param="n", code="unsupported_parameter")
        if self.stop:
            raise ApiError(400, "stop sequences are not supported", param="stop", code="unsupported_parameter")

    # -- the task ---------------------------------------------------------------------------
    def turns(self) -> tuple[list[dict[str, str]], str]:
        """The conversation before the last message, and the last message (the task's prompt)."""
        turns = []
        for message in self.messages:
            if message.role == "tool":
                raise ApiError(400, "messages with role 'tool' belong to client-side tools, which are not supported",
                               param="messages", code="unsupported_parameter")
            role = "system" if message.role == "developer" else message.role
            text = message.text()
            problem = unstorable(text)
            if problem:
                raise ApiError(400, f"a message cannot be accepted: {problem}", param="messages")
            turns.append({"role": role, "content": text})
        if turns[-1]["role"] != "user":
            raise ApiError(400, "the last message must be the user's: it is what the model answers", param="messages")
        total = sum(len(t["content"]) for t in turns)
        if total > settings.ASYNCLM_MAX_PROMPT_CHARS:
            raise ApiError(400, f"the messages hold {total} characters; the limit is "
                                f"{settings.ASYNCLM_MAX_PROMPT_CHARS}", param="messages",
                           code="context_length_exceeded")
        return turns[:-1], turns[-1]["content"]

    def form_data(self, prompt: str, tool_ids: list[int]) -> dict[str, Any]:
        """The submit form's input: the endpoint validates a task exactly like the dashboard."""
        max_tokens = self.max_completion_tokens or self.max_tokens or 256
        return {"prompt": prompt, "model": self.model, "mode": self.asynclm_mode, "max_tokens": max_tokens,
                "temperature": 0.0 if self.temperature is None else self.temperature,
                "top_p": 1.0 if self.top_p is None else self.top_p, "seed": self.seed or 0,
                "tools": [str(pk) for pk in tool_ids], "max_calls": 16, "max_wall_s": 300}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        chat = ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from exc
    chat.refuse_unsupported()
    return chat
