"""The team form (page and API): a shared goal and 2-8 members, each a name, a role, a model, a
mode and an optional tool pack. Validated like a task (sizes, storable text, models the user may
pick) before anything is stored."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from webapp.core.validators import validate_storable
from webapp.runs.forms import model_choices
from webapp.runs.models import Task
from webapp.runs.teams import MAX_MEMBERS, MIN_MEMBERS, TeamError, check_members
from webapp.tools.models import ToolPack

MAX_ROLE_CHARS = 2000


class TeamForm(forms.Form):
    goal = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), validators=[validate_storable],
                           help_text="what the team works on; every member reads it")
    max_tokens = forms.IntegerField(min_value=1, initial=256, help_text="per member")
    max_wall_s = forms.FloatField(min_value=1, max_value=3600, initial=300, label="Max wall time (s)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["goal"].max_length = settings.ASYNCLM_MAX_PROMPT_CHARS
        self.fields["goal"].validators.append(forms.CharField(max_length=settings.ASYNCLM_MAX_PROMPT_CHARS).validators[-1])
        self.fields["max_tokens"].validators.append(
            forms.IntegerField(max_value=settings.ASYNCLM_MAX_TOKENS_LIMIT).validators[-1])


class MemberForm(forms.Form):
    name = forms.CharField(max_length=32, help_text="how teammates address it")
    role = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=MAX_ROLE_CHARS,
                           validators=[validate_storable], help_text="its instruction")
    model = forms.ChoiceField(choices=model_choices)
    mode = forms.ChoiceField(choices=Task.Mode.choices, initial=Task.Mode.ASYNC)
    pack = forms.ModelChoiceField(queryset=ToolPack.objects.all(), required=False, empty_label="(no tools)")

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = model_choices(user)
        self.fields["model"].initial = settings.ASYNCLM_DEFAULT_MODEL

    def member(self) -> dict[str, Any]:
        data = self.cleaned_data
        tools = data["pack"].tool_specs() if data.get("pack") else []
        return {"name": data["name"], "role": data["role"], "model": data["model"], "mode": data["mode"],
                "tools": tools}


class BaseMemberFormSet(forms.BaseFormSet):
    def clean(self) -> None:
        if any(self.errors):
            return
        try:
            check_members([f.cleaned_data for f in self.forms if f.cleaned_data])
        except TeamError as exc:
            raise forms.ValidationError(str(exc)[:1].upper() + str(exc)[1:] + ".") from None


# Two members to fill in and two more rows left empty unless wanted (no script needed).
MemberFormSet = forms.formset_factory(MemberForm, formset=BaseMemberFormSet, extra=2, min_num=MIN_MEMBERS,
                                      max_num=MAX_MEMBERS, validate_min=True, validate_max=True)


def team_forms(data: Any, user: Any) -> tuple[TeamForm, Any]:
    return TeamForm(data, prefix="team"), MemberFormSet(data, prefix="member", form_kwargs={"user": user})


def members_of(formset: Any) -> list[dict[str, Any]]:
    return [f.member() for f in formset.forms if f.cleaned_data]
