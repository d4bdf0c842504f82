#!/usr/bin/env bash
# `make run`: install what is missing, prepare the database, start every process under honcho.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

scripts/bootstrap.sh
export PATH="$VENV/bin:$PATH"
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-webapp.settings.local}"
mkdir -p var
say "applying migrations"
python manage.py migrate --noinput
python manage.py ensure_admin
python manage.py import_bfcl  # idempotent: unchanged packs are skipped in well under a second

procs="web engine worker"
if redis_answers "$REDIS_URL"; then
  say "using the Redis server at $REDIS_URL"
else
  say "no Redis answers at $REDIS_URL: starting a private one (no persistence)"
  procs="redis $procs"
fi

port="${ASYNCLM_PORT:-8000}"
say "AsyncLM: open http://127.0.0.1:$port and log in as 'admin' (password in var/admin-password.txt). Ctrl-C stops everything."
exec honcho start -f Procfile $procs
