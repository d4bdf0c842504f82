"""The OpenAI-compatible endpoint: `GET /v1/models`, `POST /v1/chat/completions`.

A request becomes one task of the caller's (the same checks, quotas and rate as the dashboard and
our API), visible on the dashboard like any other. Its answer is read from the task's trace as the
engine writes it: streamed as server-sent events in OpenAI's chunk format, or returned whole.
Tools are the service's own (`tool_packs`); the engine runs them asynchronously, as everywhere
else, and the reply reports each call and its result. A client that goes away cancels its task.
Authentication: `Authorization: Bearer <token>` with a token from /settings/tokens/.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from engine.catalog import MODELS
from webapp.api.models import ApiToken
from webapp.core.redis import ServiceUnavailable
from webapp.openai_api import request as chat_request
from webapp.openai_api.errors import ApiError
from webapp.openai_api.reply import Reply
from webapp.runs.follow import TraceFollower
from webapp.runs.forms import TaskForm, model_choices
from webapp.runs.models import Task
from webapp.runs.submit import RateLimited, TooManyTasks, cancel_task, submit_task, task_fields
from webapp.tools.models import ToolPack

log = logging.getLogger(__name__)

KEEPALIVE_S = 10.0  # an SSE comment while nothing happens (a queued task), so proxies keep the stream
# The form's field names, as the request calls them.
PARAMS = {"prompt": "messages", "tools": "tool_packs", "mode": "asynclm_mode"}


def _user(request: HttpRequest):
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Missing API key: send `Authorization: Bearer <token>` "
                            "(make a token on /settings/tokens/).", code="invalid_api_key")
    user = ApiToken.authenticate(token.strip())
    if user is None:
        raise ApiError(401, "Incorrect API key provided (make a token on /settings/tokens/).", code="invalid_api_key")
    return user


def _model_document(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "asynclm", "asynclm_label": MODELS[name].label}


@csrf_exempt
def models(request: HttpRequest) -> HttpResponse:
    try:
        if request.method != "GET":
            raise ApiError(405, f"{request.method} is not allowed here: use GET")
        user = _user(request)
    except ApiError as exc:
        return exc.response()
    return JsonResponse({"object": "list", "data": [_model_document(name) for name, _ in model_choices(user)]})


@csrf_exempt
def model(request: HttpRequest, name: str) -> HttpResponse:
    try:
        user = _user(request)
        if name not in dict(model_choices(user)):
            raise ApiError(404, f"The model {name!r} does not exist here (GET /v1/models lists them).",
                           param="model", code="model_not_found")
    except ApiError as exc:
        return exc.response()
    return JsonResponse(_model_document(name))


# -- chat completions ------------------------------------------------------------------------
def _tool_ids(chat: chat_request.ChatRequest) -> list[int]:
    if chat.tool_choice == "none":
        return []
    ids: list[int] = []
    for name in chat.tool_packs:
        pack = ToolPack.objects.filter(name=name).first()
        if pack is None:
            raise ApiError(400, f"unknown tool pack {name!r}", param="tool_packs", code="unknown_tool_pack")
        ids += [pk for pk in pack.tools.filter(enabled=True).values_list("pk", flat=True) if pk not in ids]
    return ids


def _submit(request: HttpRequest) -> tuple[Task, chat_request.ChatRequest]:
    user = _user(request)
    chat = chat_request.parse(request.body)
    conversation, prompt = chat.turns()
    if chat.model not in dict(model_choices(user)):
        raise ApiError(404, f"The model {chat.model!r} does not exist here (GET /v1/models lists them).",
                       param="model", code="model_not_found")
    form = TaskForm(chat.form_data(prompt, _tool_ids(chat)), user=user)
    if not form.is_valid():
        field, messages = next(iter(form.errors.items()))
        param = None if field == "__all__" else PARAMS.get(field, field)
        raise ApiError(400, f"{param}: {messages[0]}" if param else str(messages[0]), param=param)
    try:
        task = submit_task(user, **task_fields(form.cleaned_data), conversation=conversation)
    except RateLimited as exc:
        raise ApiError(429, str(exc), code="rate_limit_exceeded") from exc
    except TooManyTasks as exc:
        raise ApiError(429, str(exc), code="too_many_open_tasks") from exc
    except ServiceUnavailable as exc:
        raise ApiError(503, str(exc), code="service_unavailable") from exc
    return task, chat


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    try:
        if request.method != "POST":
            raise ApiError(405, f"{request.method} is not allowed here: use POST")
        task, chat = await sync_to_async(_submit)(request)
    except ApiError as exc:
        return exc.response()
    if chat.stream:
        response = StreamingHttpResponse(_stream(task, chat), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a reverse proxy must pass each event on at once
        return response
    reply = Reply()
    async for event in _trace(task):
        if event is not None:
            reply.feed(event)
    task = await Task.objects.aget(pk=task.pk)
    try:
        _check_finished(task, reply)
    except ApiError as exc:
        return exc.response()
    return JsonResponse({**_head(task, "chat.completion"), "choices": [{
        "index": 0, "message": reply.message(), "logprobs": None, "finish_reason": reply.finish_reason,
    }], "usage": reply.usage(), "asynclm": _about(task)})


async def _stream(task: Task, chat: chat_request.ChatRequest) -> AsyncIterator[str]:
    reply = Reply()
    head = _head(task, "chat.completion.chunk")

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **more: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**head, "choices": [choice], **more})

    yield chunk({"role": "assistant", "content": ""})
    async for event in _trace(task):
        if event is None:
            yield ": keep-alive\n\n"
            continue
        for delta in reply.feed(event):
            yield chunk(delta)
    task = await Task.objects.aget(pk=task.pk)
    try:
        _check_finished(task, reply)
    except ApiError as exc:
        yield _sse(exc.document())
    else:
        yield chunk({}, reply.finish_reason, asynclm=_about(task))
        if chat.include_usage:
            yield _sse({**head, "choices": [], "usage": reply.usage()})
    yield "data: [DONE]\n\n"


async def _trace(task: Task) -> AsyncIterator[dict[str, Any] | None]:
    """The task's trace events; the task is cancelled when the client leaves before its end."""
    ended = False
    try:
        async with TraceFollower(task.pk, idle_s=KEEPALIVE_S) as trace:
            async for event in trace.events():
                yield event
        ended = True
    finally:
        if not ended:
            await sync_to_async(_cancel)(task.pk)


def _cancel(task_id: int) -> None:
    task = Task.objects.get(pk=task_id)
    try:
        log.info("task %s: %s", task_id, cancel_task(task, "the API client closed the request"))
    except ServiceUnavailable:
        log.warning("task %s: the client left, but Redis is unreachable: it runs to its end", task_id)


def _check_finished(task: Task, reply: Reply) -> None:
    if task.status != Task.Status.FINISHED:
        reason = task.status_reason or (reply.finish or {}).get("reason") or "no reason recorded"
        raise ApiError(500, f"task {task.pk} {task.status}: {reason}", code=f"task_{task.status}")


def _head(task: Task, kind: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-asynclm-{task.pk}", "object": kind, "created": int(task.created_at.timestamp()),
            "model": task.model, "system_fingerprint": None}


def _about(task: Task) -> dict[str, Any]:
    """Our extension: the task behind the reply, where to watch it, and how it ran."""
    return {"task_id": task.pk, "url": reverse("task_detail", args=[task.pk]), "status": task.status,
            "mode": task.mode, "adapter": task.adapter}


def _sse(document: dict[str, Any]) -> str:
    return f"data: {json.dumps(document, separators=(',', ':'))}\n\n"
