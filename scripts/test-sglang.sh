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
export PATH="$VENV/bin:$PATH"
export DJANGO_SETTINGS_MODULE=webapp.settings.test
ensure_redis

# One server at a time (two cores): SmolLM2-135M for the backend tests (fast), then
# Qwen2.5-Coder-0.5B, the model the mode tests run on every backend.
ours=""
stop() { [ -z "$ours" ] || ASYNCLM_SGLANG_MODEL="$ours" ASYNCLM_SGLANG_PORT="$port" scripts/sglang-server.sh stop; ours=""; }
trap stop EXIT
serve() {  # serve MODEL PORT: convert and start the server unless one already answers there
  export ASYNCLM_SGLANG_MODEL="$1" ASYNCLM_SGLANG_PORT="$2"
  port="$2"
  scripts/sglang-server.sh convert
  if ! scripts/sglang-server.sh status >/dev/null 2>&1; then
    scripts/sglang-server.sh start
    ours="$1"
  fi
}

serve smollm2-135m 30123
export ASYNCLM_TEST_SGLANG_URL="http://127.0.0.1:30123"
say "SGLang backend tests against the imitation and the real server at $ASYNCLM_TEST_SGLANG_URL"
python -m pytest tests/integration/test_sglang_servers.py tests/integration/test_sglang_backend.py \
  tests/unit/test_sglang_protocol.py tests/unit/test_scheduler_remote.py tests/unit/test_grammar.py "$@"
stop

serve qwen2.5-coder-0.5b 30124
export ASYNCLM_TEST_SGLANG_QWEN_URL="http://127.0.0.1:30124"
say "the mode tests on every backend, the real server at $ASYNCLM_TEST_SGLANG_QWEN_URL included"
python -m pytest tests/integration/test_calls_with_model.py "$@"
stop
say "make test-sglang passed in $(( $(date +%s) - started )) s"
