from django import forms
from django.conf import settings

from engine.catalog import MODELS
from webapp.core.validators import validate_storable
from webapp.runs.models import Task
from webapp.tools.bfcl import instance_specs
from webapp.tools.models import Tool, ToolPack


def model_choices(user=None) -> list[tuple[str, str]]:
    """The models a user may pick. Benchmark-only decoders (the simulated one follows a plan in the
    prompt at a token time it asks for) are for staff, or for everyone where a setting says so."""
    benchmarks = settings.ASYNCLM_OFFER_BENCHMARK_DECODERS or bool(user and user.is_staff)
    return [(spec.name, spec.label) for spec in MODELS.values() if spec.backend != "simulated" or benchmarks]


def tool_choices() -> list[tuple[str, list[tuple[int, str]]]]:
    """The tool picker's options, grouped by pack."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for pk, pack, name in Tool.objects.filter(enabled=True).values_list("pk", "pack__name", "name"):
        groups.setdefault(pack, []).append((pk, name))
    return list(groups.items())


class TaskForm(forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5, "placeholder": "Ask the model something"}),
        strip=True,
        error_messages={"required": "Write a prompt for the model."},
        validators=[validate_storable],
    )
    model = forms.ChoiceField(choices=model_choices)
    max_tokens = forms.IntegerField(min_value=1, initial=256)
    temperature = forms.FloatField(min_value=0.0, max_value=2.0, initial=0.0,
                                   help_text="0 decodes greedily (deterministic).")
    top_p = forms.FloatField(min_value=0.01, max_value=1.0, initial=1.0)
    seed = forms.IntegerField(min_value=0, max_value=2**31 - 1, initial=0)
    mode = forms.ChoiceField(choices=Task.Mode.choices, initial=Task.Mode.ASYNC)
    pack = forms.ModelChoiceField(queryset=ToolPack.objects.all(), required=False, empty_label="(no pack)",
                                  to_field_name="name", help_text="Give the model every enabled tool of a pack…")
    tools = forms.ModelMultipleChoiceField(queryset=Tool.objects.filter(enabled=True).select_related("pack"),
                                           required=False, help_text="…and/or pick tools one by one.")
    instances = forms.JSONField(
        required=False, label="Stateful instances (BFCL)",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": '{"e1": {"class": "GorillaFileSystem", '
                                                               '"initial_config": {}}}'}),
        help_text="Optional: named instances of BFCL classes, each with its own state; their tools are "
                  "named e1.cd, e1.ls, …")
    compare = forms.BooleanField(
        required=False, label="Compare modes",
        help_text="Run the same prompt, tools, seed and tool latencies under sync, sync parallel and async, one "
                  "after the other, and show the three timelines together (the mode above is then ignored).")
    max_calls = forms.IntegerField(min_value=0, max_value=100, initial=16)
    max_wall_s = forms.FloatField(min_value=1, max_value=3600, initial=300, label="Max wall time (s)")

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = model_choices(user)
        self.fields["model"].initial = settings.ASYNCLM_DEFAULT_MODEL
        self.fields["max_tokens"].max_value = settings.ASYNCLM_MAX_TOKENS_LIMIT
        self.fields["max_tokens"].validators.append(
            forms.IntegerField(max_value=settings.ASYNCLM_MAX_TOKENS_LIMIT).validators[-1])
        self.fields["prompt"].max_length = settings.ASYNCLM_MAX_PROMPT_CHARS
        self.fields["tools"].choices = tool_choices

    def clean(self):
        cleaned = super().clean()
        chosen = list(cleaned.get("tools") or [])
        if cleaned.get("pack"):
            chosen += [t for t in cleaned["pack"].tools.filter(enabled=True) if t not in chosen]
        specs = [t.spec().to_dict() for t in chosen]
        cleaned["instance_states"] = {}
        if cleaned.get("instances"):
            try:
                named, cleaned["instance_states"] = instance_specs(cleaned["instances"])
            except ValueError as exc:
                self.add_error("instances", str(exc))
                return cleaned
            specs += named
        names = [s["name"] for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise forms.ValidationError(
                f"A task's tools need unique names; chosen more than once: {', '.join(duplicates)}.")
        cleaned["tool_specs"] = specs
        return cleaned

    def clean_prompt(self):
        prompt = self.cleaned_data["prompt"]
        limit = settings.ASYNCLM_MAX_PROMPT_CHARS
        if len(prompt) > limit:
            raise forms.ValidationError(
                f"The prompt is {len(prompt)} characters; the limit is {limit}.")
        return prompt


class TaskFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "any status"), *Task.Status.choices], required=False)
    mode = forms.ChoiceField(choices=[("", "any mode"), *Task.Mode.choices], required=False)
    model = forms.ChoiceField(choices=lambda: [("", "any model"), *model_choices()], required=False)
    q = forms.CharField(required=False, label="Prompt contains", max_length=200)

    def apply(self, rows):
        if not self.is_valid():
            return rows
        data = self.cleaned_data
        for field in ("status", "mode", "model"):
            if data.get(field):
                rows = rows.filter(**{field: data[field]})
        if data.get("q"):
            rows = rows.filter(prompt__icontains=data["q"])
        return rows
