"""Settings for `make run` on a developer's machine."""

from django.core.exceptions import ImproperlyConfigured

from webapp.settings.base import *  # noqa: F403
from webapp.settings.base import VAR_DIR, env

DEBUG = env.bool("DJANGO_DEBUG", True)
# Static files change while `make run` runs: re-read them (without it, an edited file is served
# with its old length, cut short).
WHITENOISE_AUTOREFRESH = DEBUG


def _local_secret_key() -> str:
    # Generated once and kept in the git-ignored var/ folder, so sessions survive restarts.
    import secrets

    from webapp.core.files import write_private

    path = VAR_DIR / "secret-key.txt"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(50))  # another process may have been first
    return path.read_text().strip()


SECRET_KEY = env.str("DJANGO_SECRET_KEY", "") or _local_secret_key()
if not SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY is empty")
