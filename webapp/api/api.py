"""The JSON API (django-ninja): tasks, their events and traces, messages, cancellation.

Scripts authenticate with `Authorization: Bearer <token>` (tokens are made and revoked on the
settings page); the browser uses its session (with CSRF on unsafe methods). Every lookup is
scoped to the caller's own tasks: another user's task is a 404, like a missing one."""

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404
from ninja import NinjaAPI, Query, Router, Status
from ninja.pagination import PageNumberPagination, paginate
from ninja.security import HttpBearer, SessionAuth
from ninja.throttling import AuthRateThrottle

from webapp.api.models import ApiToken
from webapp.api.schemas import (
    ActionOut,
    ComparisonOut,
    ErrorOut,
    EventsOut,
    MessageIn,
    TaskFilters,
    TaskIn,
    TaskOut,
    TaskSummary,
    TeamIn,
    TeamOut,
    ValidationErrorOut,
)
from webapp.core.redis import ServiceUnavailable
from webapp.runs.export import events_after, task_document, trace_document
from webapp.runs.forms import TaskForm
from webapp.runs.models import Task
from webapp.runs.submit import (
    RateLimited,
    TaskNotRunning,
    TooManyTasks,
    cancel_task,
    send_message,
    submit_comparison,
    submit_task,
    task_fields,
)
from webapp.runs.team_forms import members_of, team_forms
from webapp.runs.teams import submit_team


class TokenAuth(HttpBearer):
    def authenticate(self, request, token):
        user = ApiToken.authenticate(token)
        if user is not None:
            request.user = user
        return user


api = NinjaAPI(
    title="AsyncLM API",
    version="1",
    description="LLM tasks whose function calls run while the model keeps decoding. "
                "Authenticate with `Authorization: Bearer <token>` (make one on /settings/tokens/).",
    auth=[TokenAuth(), SessionAuth()],
    urls_namespace="api",
    # The document and its UI are for logged-in users too (login is required everywhere).
    docs_decorator=login_required,
)
tasks = Router(tags=["tasks"])


class SettingRateThrottle(AuthRateThrottle):
    """Per-user rate from a setting, read at each request (a changed setting applies at once)."""

    def __init__(self, setting: str) -> None:
        self.setting = setting
        super().__init__(getattr(settings, setting))

    def allow_request(self, request) -> bool:
        rate = getattr(settings, self.setting)
        if rate != self.rate:
            self.rate = rate
            self.num_requests, self.duration = self.parse_rate(rate)
        return super().allow_request(request)


def _own(request, pk: int) -> Task:
    return get_object_or_404(Task, pk=pk, owner=request.auth)


@tasks.post("/tasks", response={201: TaskOut | ComparisonOut, 409: ErrorOut, 422: ValidationErrorOut, 429: ErrorOut,
                                         503: ErrorOut},
            throttle=[SettingRateThrottle("ASYNCLM_API_TASK_RATE")],
            summary="Create a task (or, with compare, one per mode run one after the other)")
def create_task(request, payload: TaskIn):
    form = TaskForm(payload.form_data(), user=request.auth)
    if not form.is_valid():
        errors = {field: [str(m) for m in messages] for field, messages in form.errors.items()}
        return Status(422, {"detail": "invalid task", "errors": errors})
    try:
        if form.cleaned_data.get("compare"):
            runs = submit_comparison(request.auth, **task_fields(form.cleaned_data))
            return Status(201, {"compare_group": str(runs[0].compare_group), "tasks": [task_document(t) for t in runs]})
        task = submit_task(request.auth, **task_fields(form.cleaned_data))
    except (ServiceUnavailable, TooManyTasks) as exc:
        return _refused(exc)
    return Status(201, task_document(task))


def _refused(exc: Exception) -> Status:
    """A valid request the service could not take: Redis unreachable, rate or per-user cap."""
    code = 503 if isinstance(exc, ServiceUnavailable) else 429 if isinstance(exc, RateLimited) else 409
    return Status(code, {"detail": str(exc)})


@tasks.post("/teams", response={201: TeamOut, 409: ErrorOut, 422: ValidationErrorOut, 429: ErrorOut, 503: ErrorOut},
            throttle=[SettingRateThrottle("ASYNCLM_API_TASK_RATE")],
            summary="Start a team of agents (a task per member; each can message the others while it works)")
def create_team(request, payload: TeamIn):
    form, members = team_forms(payload.form_data(), request.auth)
    if not (form.is_valid() & members.is_valid()):
        errors = {f"team.{k}": [str(m) for m in v] for k, v in form.errors.items()}
        for i, member_errors in enumerate(members.errors):
            errors |= {f"members.{i}.{k}": [str(m) for m in v] for k, v in member_errors.items()}
        if members.non_form_errors():
            errors["members"] = [str(m) for m in members.non_form_errors()]
        return Status(422, {"detail": "invalid team", "errors": errors})
    data = form.cleaned_data
    try:
        team = submit_team(request.auth, data["goal"], members_of(members), max_tokens=data["max_tokens"],
                           max_wall_s=data["max_wall_s"])
    except (ServiceUnavailable, TooManyTasks) as exc:
        return _refused(exc)
    return Status(201, {"team": team[0].team, "tasks": [task_document(t) for t in team]})


@tasks.get("/tasks", response=list[TaskSummary], summary="Your tasks, newest first")
@paginate(PageNumberPagination, page_size=25)
def list_tasks(request, filters: Query[TaskFilters]):
    rows = Task.objects.filter(owner=request.auth)
    if filters.status:
        rows = rows.filter(status=filters.status)
    if filters.mode:
        rows = rows.filter(mode=filters.mode)
    if filters.compare_group:
        rows = rows.filter(compare_group=filters.compare_group)
    return PageOfDocuments(rows)


class PageOfDocuments:
    """The task list as the paginator sees it: counted and sliced in the database, and documents
    built only for the page asked for (a user with 20,000 tasks costs one page, not all)."""

    def __init__(self, rows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.count()

    def __getitem__(self, page: slice) -> list[dict]:
        return [task_document(t, calls=False) for t in self.rows[page]]


@tasks.get("/tasks/{pk}", response={200: TaskOut, 404: ErrorOut}, summary="A task: status, output, calls, metrics")
def get_task(request, pk: int):
    return task_document(_own(request, pk))


@tasks.get("/tasks/{pk}/events", response={200: EventsOut, 404: ErrorOut},
           summary="Trace events after a sequence number (poll with the returned `last_seq`)")
def get_events(request, pk: int, after: int = 0, limit: int = 1000):
    task = _own(request, pk)
    events = events_after(task, after, max(1, min(limit, 5000)))
    return {"task_id": task.pk, "status": task.status, "events": events,
            "last_seq": events[-1]["seq"] if events else after}


@tasks.get("/tasks/{pk}/trace", response={200: dict, 404: ErrorOut},
           summary="The whole trace as one JSON document (task, calls, every event)")
def export_trace(request, pk: int):
    return trace_document(_own(request, pk), with_config=request.auth.is_staff)


@tasks.post("/tasks/{pk}/messages", response={202: ActionOut, 404: ErrorOut, 409: ErrorOut, 503: ErrorOut},
            summary="Send a person's message into a running task (a human interrupt)")
def post_message(request, pk: int, payload: MessageIn):
    task = _own(request, pk)
    try:
        return Status(202, {"detail": send_message(task, payload.text)})
    except TaskNotRunning as exc:
        return Status(409, {"detail": str(exc)})
    except ServiceUnavailable as exc:
        return Status(503, {"detail": str(exc)})


@tasks.post("/tasks/{pk}/cancel", response={202: ActionOut, 404: ErrorOut, 503: ErrorOut}, summary="Cancel a task")
def cancel(request, pk: int):
    try:
        return Status(202, {"detail": cancel_task(_own(request, pk))})
    except ServiceUnavailable as exc:
        return Status(503, {"detail": str(exc)})


api.add_router("/", tasks)
