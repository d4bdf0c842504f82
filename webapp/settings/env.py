"""One typed reader for every setting that comes from the environment.

A bad value stops the process at start-up with the variable's name and what was
expected, instead of surfacing later as an obscure failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Env:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return None if value is None else value.strip()

    def _fail(self, name: str, value: str, expected: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(f"Environment variable {name}={value!r} is not {expected}.")

    def str(self, name: str, default: str) -> str:
        raw = self._raw(name)
        return default if raw is None or raw == "" else raw

    def bool(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise self._fail(name, raw, "a boolean (true/false, 1/0, yes/no, on/off)")

    def int(self, name: str, default: int, *, min: int | None = None, max: int | None = None) -> int:
        raw = self._raw(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self._fail(name, raw, "an integer") from None
        if (min is not None and value < min) or (max is not None and value > max):
            raise self._fail(name, raw, f"an integer in [{min}, {max}]")
        return value

    def float(self, name: str, default: float, *, min: float | None = None) -> float:
        raw = self._raw(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self._fail(name, raw, "a number") from None
        if min is not None and value < min:
            raise self._fail(name, raw, f"a number >= {min}")
        return value

    def list(self, name: str, default: list[str]) -> list[str]:
        raw = self._raw(name)
        if raw is None:
            return default
        return [item.strip() for item in raw.split(",") if item.strip()]

    def mapping(self, name: str, default: dict[str, str]) -> dict[str, str]:
        """`key=value,key=value`."""
        raw = self._raw(name)
        if raw is None:
            return default
        out = {}
        for item in filter(None, (i.strip() for i in raw.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise self._fail(name, raw, "key=value pairs separated by commas")
            out[key.strip()] = value.strip()
        return out

    def path(self, name: str, default: Path) -> Path:
        raw = self._raw(name)
        return default if not raw else Path(raw).expanduser().resolve()

    def redis_url(self, name: str, default: str) -> str:
        raw = self.str(name, default)
        parsed = urlparse(raw)
        if parsed.scheme not in ("redis", "rediss", "unix") or (parsed.scheme != "unix" and not parsed.hostname):
            raise self._fail(name, raw, "a Redis URL such as redis://127.0.0.1:6379/0")
        return raw

    def database(self, name: str, default: str, *, base_dir: Path) -> dict:
        """Parse DATABASE_URL: sqlite:///relative/or//absolute/path or postgres://user:pw@host:port/db."""
        raw = self.str(name, default)
        parsed = urlparse(raw)
        if parsed.scheme == "sqlite":
            path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
            if not path:
                raise self._fail(name, raw, "a SQLite URL with a file path (sqlite:///var/db.sqlite3)")
            return {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": path if path.startswith("/") else str(base_dir / path),
                # WAL lets the web process read while the engine writes trace batches.
                "OPTIONS": {
                    "timeout": 20,
                    "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                },
            }
        if parsed.scheme in ("postgres", "postgresql"):
            db_name = parsed.path.lstrip("/")
            if not db_name:
                raise self._fail(name, raw, "a PostgreSQL URL with a database name")
            return {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": unquote(db_name),
                "USER": unquote(parsed.username or ""),
                "PASSWORD": unquote(parsed.password or ""),
                "HOST": parsed.hostname or "",
                "PORT": str(parsed.port or ""),
                "CONN_MAX_AGE": 60,
            }
        raise self._fail(name, raw, "a sqlite:/// or postgres:// database URL")
