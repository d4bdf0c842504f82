from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from webapp.api.forms import TokenForm
from webapp.api.models import ApiToken


@login_required
def tokens(request):
    form = TokenForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        _, new_token = ApiToken.issue(request.user, form.cleaned_data["name"])
        form = TokenForm()
    return render(request, "api/tokens.html", {
        "form": form, "tokens": request.user.api_tokens.all(), "new_token": new_token,
    }, status=400 if form.errors else 200)


@login_required
@require_POST
def revoke(request, pk: int):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    token.delete()
    messages.info(request, f"Token {token.name} ({token.hint}…) revoked: it no longer works.")
    return redirect("api_tokens")
