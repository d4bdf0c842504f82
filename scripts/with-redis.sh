#!/usr/bin/env bash
# Run a command with a Redis answering at REDIS_URL, starting a private one (no persistence) when
# none does, and stopping it afterwards.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_redis
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-webapp.settings.local}"
"$VENV/bin/python" manage.py migrate --noinput >/dev/null
"$@"
