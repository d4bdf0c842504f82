#!/usr/bin/env bash
# `make test-sglang`: the SGLang backend against a REAL SGLang 0.5.23 server running on this CPU
# (SmolLM2-135M converted from our GGUF file), in addition to the imitation. Run it before a release
# and after any change to the SGLang path (engine/backends/sglang*.py, engine/drivers/remote.py,
# engine/grammar.py, tests/sglang_imitation.py). Not part of `make test` (CI keeps the imitation):
# the server's virtualenv is ~6 GB and the server starts in about a minute.
# A server this script started is stopped at the end; one that already answered is left running.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

started=$(date +%s)
scripts/bootstrap.sh --dev --models "qwen2.5-coder-0.5b smollm2-135m"
scripts/sglang-server.sh install
scripts/sglang-server.sh convert
ours=0
if ! scripts/sglang-server.sh status >/dev/null 2>&1; then
  scripts/sglang-server.sh start
  ours=1
fi
stop() { [ "$ours" = 1 ] && scripts/sglang-server.sh stop || true; }
trap stop EXIT

export PATH="$VENV/bin:$PATH"
export DJANGO_SETTINGS_MODULE=webapp.settings.test
export ASYNCLM_TEST_SGLANG_URL="http://127.0.0.1:${ASYNCLM_SGLANG_PORT:-30123}"
ensure_redis
say "SGLang tests against the imitation and the real server at $ASYNCLM_TEST_SGLANG_URL"
python -m pytest tests/integration/test_sglang_servers.py tests/integration/test_calls_with_model.py \
  tests/integration/test_sglang_backend.py tests/unit/test_sglang_protocol.py tests/unit/test_scheduler_remote.py \
  tests/unit/test_grammar.py "$@"
say "make test-sglang passed in $(( $(date +%s) - started )) s"
