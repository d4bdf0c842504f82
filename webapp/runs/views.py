from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from webapp.core.redis import ServiceUnavailable, read_health
from webapp.runs.forms import TaskForm
from webapp.runs.models import Task
from webapp.runs.submit import cancel_task, submit_task, task_fields


@login_required
def dashboard(request):
    form = TaskForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            task = submit_task(request.user, **task_fields(form.cleaned_data))
        except ServiceUnavailable as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("task_detail", pk=task.pk)
    tasks = Paginator(Task.objects.filter(owner=request.user), 25).get_page(request.GET.get("page"))
    return render(request, "runs/dashboard.html", {"form": form, "tasks": tasks},
                  status=400 if form.errors else 200)


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
                  {"task": task, "engine_warning": warning, "calls": task.calls.all()})


@login_required
@require_POST
def task_cancel(request, pk: int):
    task = get_object_or_404(Task, pk=pk, owner=request.user)
    try:
        messages.info(request, f"Task {task.pk}: {cancel_task(task)}.")
    except ServiceUnavailable as exc:
        messages.error(request, str(exc))
    return redirect("task_detail", pk=task.pk)
