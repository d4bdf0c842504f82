from django.contrib import admin

from webapp.tools.models import Tool, ToolPack


class ToolInline(admin.TabularInline):
    model = Tool
    fields = ("name", "kind", "est_latency_ms", "timeout_s", "enabled")
    extra = 0


@admin.register(ToolPack)
class ToolPackAdmin(admin.ModelAdmin):
    list_display = ("name", "description")
    search_fields = ("name",)
    inlines = [ToolInline]


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    list_display = ("name", "pack", "kind", "est_latency_ms", "timeout_s", "enabled")
    list_filter = ("pack", "kind", "enabled")
    search_fields = ("name", "description")
