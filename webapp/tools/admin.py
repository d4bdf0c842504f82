import json

from django import forms
from django.contrib import admin, messages
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path

from webapp.tools.mcp import import_tools
from webapp.tools.models import McpServer, Tool, ToolPack
from webapp.tools.testcall import run_test_call


class PrettyJSONWidget(forms.Textarea):
    def format_value(self, value):
        try:
            return json.dumps(json.loads(value), indent=2, ensure_ascii=False)
        except (TypeError, ValueError):
            return value


class ToolForm(forms.ModelForm):
    class Meta:
        model = Tool
        fields = [
            "pack",
            "name",
            "description",
            "parameters",
            "est_latency_ms",
            "timeout_s",
            "kind",
            "config",
            "enabled",
            "read_only",
        ]
        widgets = {
            "parameters": PrettyJSONWidget(attrs={"rows": 12, "cols": 80, "class": "vLargeTextField"}),
            "config": PrettyJSONWidget(attrs={"rows": 8, "cols": 80, "class": "vLargeTextField"}),
        }


class ToolInline(admin.TabularInline):
    model = Tool
    fields = ("name", "kind", "est_latency_ms", "timeout_s", "enabled")
    extra = 0
    show_change_link = True


@admin.register(ToolPack)
class ToolPackAdmin(admin.ModelAdmin):
    list_display = ("name", "description")
    search_fields = ("name",)
    inlines = [ToolInline]


class TestCallForm(forms.Form):
    arguments = forms.JSONField(
        initial=dict, widget=forms.Textarea(attrs={"rows": 6, "cols": 80}), help_text="JSON object of arguments"
    )

    def clean_arguments(self):
        value = self.cleaned_data["arguments"]
        if not isinstance(value, dict):
            raise forms.ValidationError("Give the arguments as a JSON object.")
        return value


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    form = ToolForm
    list_display = ("name", "pack", "kind", "est_latency_ms", "timeout_s", "enabled", "read_only")
    list_filter = ("pack", "kind", "enabled", "read_only")
    search_fields = ("name", "description", "pack__name")
    actions = ["enable", "disable"]
    change_form_template = "admin/tools/tool/change_form.html"

    @admin.action(description="Enable selected tools")
    def enable(self, request, queryset):
        self.message_user(request, f"Enabled {queryset.update(enabled=True)} tools.", messages.SUCCESS)

    @admin.action(description="Disable selected tools")
    def disable(self, request, queryset):
        self.message_user(request, f"Disabled {queryset.update(enabled=False)} tools.", messages.SUCCESS)

    def get_urls(self):
        extra = [
            path("<int:pk>/test-call/", self.admin_site.admin_view(self.test_call_view), name="tools_tool_test_call")
        ]
        return extra + super().get_urls()

    def test_call_view(self, request, pk: int):
        tool = get_object_or_404(Tool, pk=pk)
        form = TestCallForm(request.POST or None)
        outcome = None
        if request.method == "POST" and form.is_valid():
            outcome = run_test_call(tool.spec(), form.cleaned_data["arguments"])
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "tool": tool,
            "form": form,
            "outcome": outcome,
            "title": f"Test call: {tool}",
            "result_json": json.dumps(outcome.result, indent=2) if outcome and outcome.ok else "",
        }
        return TemplateResponse(request, "admin/tools/tool/test_call.html", context)


class McpServerForm(forms.ModelForm):
    url = forms.URLField(required=False, max_length=500, assume_scheme="http",
                         help_text=McpServer._meta.get_field("url").help_text)

    class Meta:
        model = McpServer
        fields = ["name", "transport", "url", "command", "timeout_s"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from django.conf import settings

        # Only allow-listed commands can be chosen: nothing typed here is ever run.
        commands = [("", "---------"), *((key, f"{key}: {line}") for key, line in
                                           settings.ASYNCLM_MCP_STDIO_COMMANDS.items())]
        self.fields["command"] = forms.ChoiceField(choices=commands, required=False,
                                                   help_text=McpServer._meta.get_field("command").help_text)


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin):
    form = McpServerForm
    list_display = ("name", "transport", "url", "command", "imported_at", "last_error")
    readonly_fields = ("imported_at", "last_error")
    actions = ["import_selected"]

    @admin.action(description="Import tools (list the server's tools into its pack)")
    def import_selected(self, request, queryset):
        for server in queryset:
            try:
                report = import_tools(server)
            except Exception as exc:  # noqa: BLE001 - each server's outcome is shown
                self.message_user(request, f"{server.name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{server.name} -> pack {server.pack_name}: {report}", messages.SUCCESS)
