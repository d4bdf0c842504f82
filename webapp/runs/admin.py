from django.contrib import admin

from webapp.runs.models import Task, TraceEvent


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "model", "status", "created_at")
    list_filter = ("status", "model")
    search_fields = ("prompt", "owner__username")
    readonly_fields = ("created_at", "started_at", "finished_at")


@admin.register(TraceEvent)
class TraceEventAdmin(admin.ModelAdmin):
    list_display = ("task", "seq", "kind", "t_ms")
    list_filter = ("kind",)
