import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from webapp.core.redis import ServiceUnavailable, read_health
from webapp.core.validators import unstorable
from webapp.runs.export import trace_document
from webapp.runs.forms import TaskFilterForm, TaskForm
from webapp.runs.lanes import lanes
from webapp.runs.models import Task
from webapp.runs.submit import (
    TaskNotRunning,
    TooManyTasks,
    cancel_task,
    send_message,
    submit_comparison,
    submit_task,
    task_fields,
)
from webapp.runs.team_forms import members_of, team_forms
from webapp.runs.teams import TeamError, submit_team, teammates


@login_required
def dashboard(request):
    form = TaskForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            if form.cleaned_data["compare"]:
                runs = submit_comparison(request.user, **task_fields(form.cleaned_data))
                return redirect("compare", group=runs[0].compare_group)
            task = submit_task(request.user, **task_fields(form.cleaned_data))
        except (ServiceUnavailable, TooManyTasks) as exc:
            form.add_error(None, str(exc)[:1].upper() + str(exc)[1:] + ".")
        else:
            return redirect("task_detail", pk=task.pk)
    filters = TaskFilterForm(request.GET or None)
    rows = filters.apply(Task.objects.filter(owner=request.user))
    tasks = Paginator(rows, 25).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "runs/dashboard.html",
                  {"form": form, "tasks": tasks, "filters": filters, "query": query.urlencode()},
                  status=400 if form.errors else 200)


@login_required
def team_new(request):
    form, members = team_forms(request.POST or None, request.user)
    if request.method == "POST" and form.is_valid() and members.is_valid():
        data = form.cleaned_data
        try:
            tasks = submit_team(request.user, data["goal"], members_of(members), max_tokens=data["max_tokens"],
                                max_wall_s=data["max_wall_s"])
        except (ServiceUnavailable, TooManyTasks, TeamError) as exc:
            form.add_error(None, str(exc)[:1].upper() + str(exc)[1:] + ".")
        else:
            return redirect("task_detail", pk=tasks[0].pk)
    return render(request, "runs/team_new.html", {"form": form, "members": members},
                  status=400 if request.method == "POST" else 200)


@login_required
def compare(request, group):
    runs = list(Task.objects.filter(owner=request.user, compare_group=group).order_by("pk"))
    if not runs:
        raise Http404("no such comparison")
    not_reproducible = sorted({t.rerun_may_differ for t in runs} - {""})  # each reason once
    return render(request, "runs/compare.html", {"runs": runs, "group": group, "not_reproducible": not_reproducible})


@login_required
def task_trace(request, pk: int):
    task = get_object_or_404(Task, pk=pk, owner=request.user)
    body = json.dumps(trace_document(task, with_config=request.user.is_staff), cls=DjangoJSONEncoder, indent=1)
    response = HttpResponse(body, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="asynclm-task-{task.pk}-trace.json"'
    return response


@login_required
def task_lanes(request, pk: int):
    """The page polls this while any lane runs: sub-agents appear as their parent starts them."""
    task = get_object_or_404(Task, pk=pk, owner=request.user)
    return JsonResponse({"lanes": lanes(task)})


@login_required
@require_POST
def task_message(request, pk: int):
    task = get_object_or_404(Task, pk=pk, owner=request.user)
    text = request.POST.get("text", "").strip()
    limit = settings.ASYNCLM_MAX_MESSAGE_CHARS
    ok, detail = False, ""
    if not text:
        detail = "Write a message first."
    elif len(text) > limit:
        detail = f"The message is {len(text)} characters; the limit is {limit}. Nothing was sent."
    elif unstorable(text):
        detail = f"The message cannot be sent: {unstorable(text)}. Nothing was sent."
    else:
        try:
            ok, detail = True, f"Task {task.pk}: {send_message(task, text)}."
        except (TaskNotRunning, ServiceUnavailable) as exc:
            detail = f"Not sent: {exc}."
    if request.headers.get("x-requested-with") == "fetch":  # the page's script: no reload
        return JsonResponse({"ok": ok, "detail": detail}, status=202 if ok else 409)
    (messages.info if ok else messages.error)(request, detail)
    return redirect("task_detail", pk=task.pk)


@login_required
def task_detail(request, pk: int):
    # Another user's task is indistinguishable from a missing one.
    task = get_object_or_404(Task, pk=pk, owner=request.user)
    health = read_health()
    warning = ""
    if not task.is_final:
        if not health.redis_ok:
            warning = health.error
        elif task.status == Task.Status.QUEUED and not health.engines:
            warning = ("No engine is running, so this task is waiting. Start one with "
                       "`make run` or `python manage.py run_engine`.")
        elif task.status == Task.Status.RUNNING and task.engine_id not in health.engine_ids:
            warning = (f"Engine {task.engine_id} that runs this task stopped answering. The task will "
                       "be marked failed when an engine starts again.")
    return render(request, "runs/task_detail.html",
                  {"task": task, "engine_warning": warning, "calls": task.calls.all(), "teammates": teammates(task),
                   "lanes": lanes(task),
                   "sync_twin": sync_twin(task), "max_message_chars": settings.ASYNCLM_MAX_MESSAGE_CHARS})


def sync_twin(task: Task) -> Task | None:
    """The latest finished `sync` run of the same prompt, model, seed and tools: the baseline of the
    speedup shown on the task page."""
    if task.mode == Task.Mode.SYNC:
        return None
    candidates = Task.objects.filter(owner=task.owner, mode=Task.Mode.SYNC, status=Task.Status.FINISHED,
                                     prompt=task.prompt, model=task.model, seed=task.seed)
    if task.compare_group:
        candidates = candidates.filter(compare_group=task.compare_group)
    names = sorted(t["name"] for t in task.tools)
    for twin in candidates.order_by("-pk")[:20]:
        if sorted(t["name"] for t in twin.tools) == names and twin.metrics.get("latency_ms"):
            return twin
    return None


@login_required
@require_POST
def task_cancel(request, pk: int):
    task = get_object_or_404(Task, pk=pk, owner=request.user)
    try:
        messages.info(request, f"Task {task.pk}: {cancel_task(task)}.")
    except ServiceUnavailable as exc:
        messages.error(request, str(exc))
    return redirect("task_detail", pk=task.pk)
