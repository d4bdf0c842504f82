from django.contrib.auth.decorators import login_required
from django.http import JsonResponse

from webapp.core.redis import read_health

# What a non-staff user may see of a process's heartbeat: no host names or process ids.
PUBLIC_FIELDS = ("id", "kind", "ts", "models", "active", "capacity")


@login_required
def health_json(request):
    h = read_health()
    engines, workers = h.engines, h.workers
    if not request.user.is_staff:
        engines = [{k: b[k] for k in PUBLIC_FIELDS if k in b} for b in engines]
        workers = [{k: b[k] for k in PUBLIC_FIELDS if k in b} for b in workers]
    return JsonResponse(
        {"redis": h.redis_ok, "error": h.error if request.user.is_staff else bool(h.error),
         "engines": engines, "workers": workers},
        status=200 if h.redis_ok else 503,
    )
