"""Settings for deployments (docker compose): every secret comes from the environment."""

from django.core.exceptions import ImproperlyConfigured

from webapp.settings.base import *  # noqa: F403
from webapp.settings.base import SECRET_KEY, env

if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set to at least 32 characters in production.")

# Served behind a reverse proxy that terminates TLS and sets X-Forwarded-Proto (docs/deployment.md).
# For a trial without TLS (plain http://localhost:8000), set ASYNCLM_BEHIND_TLS=false.
if env.bool("ASYNCLM_BEHIND_TLS", True):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", 31536000, min=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Joining the browsers' preload list is the domain owner's decision (hard to undo), not
        # the application's: the check that suggests it stays quiet unless it is asked for.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
