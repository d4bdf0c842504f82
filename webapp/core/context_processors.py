from webapp.core.redis import read_health


def health(request):
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"service_health": read_health()}
