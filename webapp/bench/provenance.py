"""Where a benchmark's numbers came from: the commit they were measured on."""

from __future__ import annotations

import subprocess

from django.conf import settings


def git_commit() -> str:
    """This checkout's short commit, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=settings.BASE_DIR, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
