from django import forms


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, strip=True, help_text="What the token is for, e.g. “bench script”.",
                           error_messages={"required": "Name the token, so you can tell it apart later."})
