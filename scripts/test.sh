#!/usr/bin/env bash
# `make test`: install what is missing, start the services the suite needs, run everything.
# usage: scripts/test.sh [--postgres]   (--postgres: the non-browser suite against PostgreSQL)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

postgres=0
[ "${1:-}" = "--postgres" ] && postgres=1

scripts/bootstrap.sh --dev --models "qwen2.5-coder-0.5b-cml smollm2-135m"
export PATH="$VENV/bin:$PATH"
export DJANGO_SETTINGS_MODULE=webapp.settings.test
mkdir -p var

ensure_redis
say "using the Redis server at $REDIS_URL (tests use their own database number)"

if [ "$postgres" = 1 ]; then
  export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/asynclm}"
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    say "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  if [ -z "${TEST_DATABASE_URL:-}" ] && ! psql -h 127.0.0.1 -U postgres -lqt 2>/dev/null | cut -d'|' -f1 | grep -qw asynclm; then
    createdb -h 127.0.0.1 -U postgres asynclm  # pytest-django connects to it before making its test database
  fi
  say "running the non-browser suite against PostgreSQL ($DATABASE_URL)"
  python -m pytest -m "not browser" --ignore=tests/browser tests
  exit 0
fi

say "lint (ruff) and types (mypy, strict, on engine/)"
ruff check .
mypy
say "unit and integration tests"
python -m pytest -m "not browser" --ignore=tests/browser tests
say "browser tests (headless chromium)"
python -m pytest -m browser tests/browser
