from django.conf import settings

from webapp.core.redis import read_health


def test_hooks(request):
    """Whether pages expose their internals to browser tests (off outside the test settings)."""
    return {"test_hooks": getattr(settings, "ASYNCLM_TEST_HOOKS", False)}


def health(request):
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"service_health": read_health()}
