#!/usr/bin/env bash
# Run a command with a Redis answering at REDIS_URL, starting a private one (no persistence) when
# none does, and stopping it afterwards.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
if ! redis_answers "$REDIS_URL"; then
  port=$(redis_port "$REDIS_URL")
  say "no Redis answers at $REDIS_URL: starting a private one on port $port"
  mkdir -p var
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "${TMPDIR:-/tmp}" \
    --daemonize yes --pidfile "$ROOT/var/redis-$port.pid" >/dev/null
  trap 'kill $(cat "$ROOT/var/redis-'"$port"'.pid")' EXIT
  for _ in $(seq 50); do redis_answers "$REDIS_URL" && break; sleep 0.1; done
fi
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-webapp.settings.local}"
"$VENV/bin/python" manage.py migrate --noinput >/dev/null
"$@"
