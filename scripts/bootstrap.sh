#!/usr/bin/env bash
# Install what is missing, idempotently: system packages, the virtualenv with pinned
# requirements (llama-cpp-python compiled with portable CPU flags), and model files.
# usage: scripts/bootstrap.sh [--dev] [--models "name ..."]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

dev=0
models="${ASYNCLM_DEFAULT_MODEL:-qwen2.5-coder-0.5b-cml}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --models) models="$2"; shift ;;
    *) die "unknown option $1" ;;
  esac
  shift
done

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ "$dev" = 1 ]; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v node >/dev/null || missing+=(nodejs)  # the trace model's unit tests (tests/js)
fi
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

# The locks (scripts/lock.sh): every package with the hashes of its files; pip refuses others.
reqs=requirements/base.lock
[ "$dev" = 1 ] && reqs=requirements/dev.lock
hash=$(cat requirements/*.txt requirements/*.lock | sha256sum | cut -c1-16)
stamp="$VENV/.installed-$hash-$dev"
# A dev install includes the base requirements.
if [ ! -f "$stamp" ] && [ ! -f "$VENV/.installed-$hash-1" ]; then
  [ -x "$PY" ] || { say "creating virtualenv in .venv"; python3 -m venv "$VENV"; }
  say "installing Python requirements from $reqs (the first time compiles llama-cpp-python: 5-10 min)"
  # Portable flags: -march=native crashed in the AMX matmul on this kind of CPU.
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
    "$PY" -m pip install --progress-bar off --require-hashes -r "$reqs" 2>&1 | pip_filter
  "$PY" -m pip install --progress-bar off --require-hashes --no-deps -r requirements/bfcl.lock 2>&1 | pip_filter
  if [ "$dev" = 1 ]; then
    "$PY" -m pip install --progress-bar off --require-hashes --no-deps -r requirements/sglang-contract.lock 2>&1 \
      | pip_filter
  fi
  "$PY" -c "import django, channels, celery, llama_cpp, bfcl_eval, mpmath" \
    || die "Python requirements did not install; see the output above"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
else
  say "Python requirements up to date"
fi

for model in $models; do
  "$PY" -m engine.modelfiles ensure "$model" --dir "${ASYNCLM_MODEL_DIR:-$ROOT/var/models}" 2>&1 | pip_filter
done
