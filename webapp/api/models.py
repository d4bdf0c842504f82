import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

PREFIX = "alm_"


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token for scripts. Only its SHA-256 is stored: the token is shown once, when made."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    hint = models.CharField(max_length=12, help_text="the token's first characters, to tell tokens apart")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @classmethod
    def issue(cls, user, name: str) -> tuple["ApiToken", str]:
        raw = PREFIX + secrets.token_urlsafe(32)
        return cls.objects.create(user=user, name=name, hint=raw[:10], digest=_digest(raw)), raw

    @classmethod
    def authenticate(cls, raw: str):  # a user or None
        token = cls.objects.select_related("user").filter(digest=_digest(raw)).first()
        if token is None or not token.user.is_active:
            return None
        if token.last_used_at is None or (timezone.now() - token.last_used_at).total_seconds() > 60:
            cls.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user
