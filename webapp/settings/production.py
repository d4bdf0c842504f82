"""Settings for deployments (docker compose): every secret comes from the environment."""

from django.core.exceptions import ImproperlyConfigured

from webapp.settings.base import *  # noqa: F403
from webapp.settings.base import SECRET_KEY

if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set to at least 32 characters in production.")
