# Shared shell helpers for the Makefile's scripts. Source it; do not run it.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $* (install it yourself, then rerun)"; fi
}

apt_install() {
  say "installing system packages: $*"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# redis_answers URL: true when a Redis server answers PING there.
redis_answers() {
  local hostport
  hostport=$(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or 6379)' "$1")
  # shellcheck disable=SC2086
  redis-cli -h ${hostport% *} -p ${hostport#* } ping 2>/dev/null | grep -q PONG
}

redis_port() {
  python3 -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).port or 6379)' "$1"
}

# ensure_redis: when no Redis answers at REDIS_URL, start a private one (scripts/redis-private.sh,
# no persistence) on that URL's port and stop it when the calling script exits.
ensure_redis() {
  redis_answers "$REDIS_URL" && return 0
  local port
  port=$(redis_port "$REDIS_URL")
  say "no Redis answers at $REDIS_URL: starting a private one on port $port"
  "$ROOT/scripts/redis-private.sh" >/dev/null 2>&1 &
  _private_redis=$!
  trap 'kill "$_private_redis" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do redis_answers "$REDIS_URL" && return 0; sleep 0.1; done
  die "the private Redis on port $port did not answer"
}

# Drop the noise this machine's pip configuration prints for every package; keep the exit status.
# bfcl-eval and sglang are installed without their declared requirements on purpose.
pip_filter() {
  grep -v -e "is ignored: it is neither a file nor a directory" -e "^Requirement already satisfied" -e "^Looking in" \
    -e "^bfcl-eval .* requires " -e "^sglang .* requires " -e "dependency resolver does not currently take into account" || true
}
