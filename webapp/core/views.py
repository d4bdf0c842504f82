from django.contrib.auth.decorators import login_required
from django.http import JsonResponse

from webapp.core.redis import read_health


@login_required
def health_json(request):
    h = read_health()
    return JsonResponse(
        {"redis": h.redis_ok, "error": h.error, "engines": h.engines, "workers": h.workers},
        status=200 if h.redis_ok else 503,
    )
