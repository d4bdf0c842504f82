"""Login attempts are throttled per user name and per address: after too many failures in a
window, even the right password is refused until the window has passed (the message says for how
long), so a password cannot be guessed by trying."""

from __future__ import annotations

import math
import time

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError

ADDRESS_FACTOR = 5  # an address may fail this many times more than one user name (shared offices)


class ThrottledLoginMixin:
    request = None

    def clean(self):
        keys = self._keys()
        window = settings.ASYNCLM_LOGIN_WINDOW_S
        for key, limit in keys:
            started = cache.get(f"{key}:since")
            if (cache.get(key) or 0) >= limit and started:
                minutes = max(1, math.ceil((started + window - time.time()) / 60))
                raise ValidationError(f"Too many failed logins: try again in {minutes} minute(s).", code="throttled")
        try:
            return super().clean()
        except ValidationError:
            for key, _ in keys:
                cache.add(f"{key}:since", time.time(), timeout=window)
                cache.add(key, 0, timeout=window)
                try:
                    cache.incr(key)
                except ValueError:  # expired in between
                    cache.set(key, 1, timeout=window)
            raise

    def _keys(self) -> list[tuple[str, int]]:
        limit = settings.ASYNCLM_LOGIN_FAILURES
        name = (self.data.get("username") or "").strip().lower()[:150]
        address = (self.request.META.get("REMOTE_ADDR", "") if self.request else "")[:64]
        return [(f"login-fail:user:{name}", limit), (f"login-fail:addr:{address}", limit * ADDRESS_FACTOR)]


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass
