#!/usr/bin/env bash
# A private Redis on REDIS_URL's port, keeping nothing on disk. Runs in the foreground.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
exec redis-server --bind 127.0.0.1 --port "$(redis_port "$REDIS_URL")" --save "" --appendonly no \
  --dir "${TMPDIR:-/tmp}"
