#!/usr/bin/env bash
# A private Redis on REDIS_URL's port, keeping nothing on disk. Runs in the foreground. The one
# place a private Redis is started: honcho runs it under `make run`, `ensure_redis` (lib.sh) in the
# background for the other scripts, and webapp/core/processes.py for Python.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
exec redis-server --bind 127.0.0.1 --port "$(redis_port "$REDIS_URL")" --save "" --appendonly no \
  --dir "${TMPDIR:-/tmp}"
