from django import forms
from django.conf import settings

from engine.catalog import MODELS


def model_choices() -> list[tuple[str, str]]:
    return [(spec.name, spec.label) for spec in MODELS.values()]


class TaskForm(forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5, "placeholder": "Ask the model something"}),
        strip=True,
        error_messages={"required": "Write a prompt for the model."},
    )
    model = forms.ChoiceField(choices=model_choices)
    max_tokens = forms.IntegerField(min_value=1, initial=256)
    temperature = forms.FloatField(min_value=0.0, max_value=2.0, initial=0.0,
                                   help_text="0 decodes greedily (deterministic).")
    top_p = forms.FloatField(min_value=0.01, max_value=1.0, initial=1.0)
    seed = forms.IntegerField(min_value=0, max_value=2**31 - 1, initial=0)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].initial = settings.ASYNCLM_DEFAULT_MODEL
        self.fields["max_tokens"].max_value = settings.ASYNCLM_MAX_TOKENS_LIMIT
        self.fields["max_tokens"].validators.append(
            forms.IntegerField(max_value=settings.ASYNCLM_MAX_TOKENS_LIMIT).validators[-1])
        self.fields["prompt"].max_length = settings.ASYNCLM_MAX_PROMPT_CHARS

    def clean_prompt(self):
        prompt = self.cleaned_data["prompt"]
        limit = settings.ASYNCLM_MAX_PROMPT_CHARS
        if len(prompt) > limit:
            raise forms.ValidationError(
                f"The prompt is {len(prompt)} characters; the limit is {limit}.")
        return prompt
